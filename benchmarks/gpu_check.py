"""The GPU check: the cascade on a CT-sized study and a short DDP training, on CUDA (or the CPU).

    python benchmarks/gpu_check.py                      # CUDA: a 512x512x200 CT, AMP on and off
    python benchmarks/gpu_check.py --device cpu --size small --out /tmp/gpu_check.md   # what CI runs

Steps, each timed and written to one Markdown file (default ``benchmarks/results/gpu_check-<device>.md``):

1. generate a CT-sized study (512x512x200 at 0.8x0.8x2.5 mm; ``--size small``: 128x128x48);
2. the cascade end to end as ``/infer/cascade`` runs it in the server process (read the file, organ,
   lesion, classifier, write the label), per stage, median of ``--repeats``, with AMP (bf16 where
   supported) on and off; the label maps of both must agree on >= 99% of the organ;
3. a short DDP training of the organ stage with world size 1 (NCCL on CUDA, gloo on the CPU),
   publishing a model that loads back.

``benchmarks/gpu_check.sh`` installs carried wheels first on a machine with CUDA PyTorch but no MONAI.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from radcascade.cascade import Cascade
from radcascade.checkpoints import read_checkpoint
from radcascade.distributed import Distributed, spawn
from radcascade.labels import LabelContract
from radcascade.networks import TINY_UNET
from radcascade.sample_data import generate_datastore
from radcascade.training import TrainConfig, Trainer, cases_from_folder
from radcascade.volumes import atomic_write_image, label_image_like, load_volume

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "apps" / "radcascade" / "pretrained"
SIZES = {"ct": ((512, 512, 200), (0.8, 0.8, 2.5)), "small": ((128, 128, 48), (2.5, 2.5, 4.0))}


def time_cascade(image: Path, device: torch.device, amp: bool, repeats: int, work: Path) -> dict:
    cascade = Cascade.in_folder(LabelContract(), PRETRAINED, device, amp=amp)
    runs, label = [], None
    for i in range(repeats + 1):  # the first run warms up (model load, CUDA kernels)
        t0 = time.perf_counter()
        volume = load_volume(image)
        t_load = time.perf_counter() - t0
        result = cascade.run(volume)
        t1 = time.perf_counter()
        atomic_write_image(label_image_like(result.label, volume), work / "label.nii.gz")
        total = time.perf_counter() - t0
        if i:
            runs.append({"load": t_load, **result.latencies_s, "write": time.perf_counter() - t1, "total": total})
        label = result.label
    stages = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
    return {"stages_s": stages, "label": label, "lesions": len(result.lesions)}


def _train(ctx: Distributed, cases, model: Path, out: Path) -> None:
    cfg = TrainConfig(stage="organ", max_epochs=2, spec=TINY_UNET, patch_size=(32, 32, 16), samples_per_volume=2,
                      val_fraction=0.34, warm_start=False)
    t0 = time.perf_counter()
    result = Trainer(cfg, LabelContract(), model, dist=ctx).fit(cases)
    if ctx.main:
        out.write_text(json.dumps({"seconds": time.perf_counter() - t0, "world_size": ctx.world_size,
                                   "best_metric": result.best_metric, "device": str(ctx.device())}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=sorted(SIZES), default="ct")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    device = torch.device(a.device)
    out = a.out or REPO / "benchmarks" / "results" / f"gpu_check-{device.type}.md"
    shape, spacing = SIZES[a.size]
    lines = [f"# GPU check ({device}, {a.size} study {'x'.join(map(str, shape))} at {spacing} mm)", "",
             json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
                         "torch": torch.__version__,
                         "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}), ""]
    with tempfile.TemporaryDirectory(prefix="rc-gpu-check-") as tmp:
        tmp = Path(tmp)
        generate_datastore(tmp / "ct", 1, 0, seed=7300, shape=shape, spacing=spacing, prefix="check")
        image = next((tmp / "ct").glob("*.nii.gz"))
        timings = {amp: time_cascade(image, device, amp, a.repeats, tmp) for amp in (True, False)}
        organ_on, organ_off = (timings[amp]["label"] >= 1 for amp in (True, False))
        agreement = float((organ_on & organ_off).sum() / max(1, (organ_on | organ_off).sum()))
        stages = list(timings[True]["stages_s"])
        lines += ["## Cascade end to end (median of %d, seconds)" % a.repeats, "",
                  "| stage | AMP on | AMP off |", "|---|---|---|"]
        lines += [f"| {s} | {timings[True]['stages_s'][s]:.3f} | {timings[False]['stages_s'].get(s, 0):.3f} |"
                  for s in stages]
        lines += ["", f"Organ agreement AMP on vs off (IoU): {agreement:.4f}; lesions found: "
                      f"{timings[True]['lesions']} / {timings[False]['lesions']}", ""]
        if agreement < 0.99:
            raise SystemExit(f"AMP changes the organ: IoU {agreement:.4f} < 0.99")

        generate_datastore(tmp / "train", 3, 0, seed=7400, shape=(80, 80, 32), spacing=(4.0, 4.0, 6.0), prefix="train")
        cases = cases_from_folder(tmp / "train")
        spawn(1, _train, cases, tmp / "organ.pt", tmp / "train.json")
        trained = json.loads((tmp / "train.json").read_text())
        read_checkpoint(tmp / "organ.pt")  # the published model loads back
        lines += ["## DDP training (organ stage, tiny network, 2 epochs)", "",
                  f"world size {trained['world_size']} on {trained['device']}: {trained['seconds']:.1f} s, "
                  f"validation Dice {trained['best_metric']}", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
