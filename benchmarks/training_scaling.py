"""Training throughput with 1 and N processes (torch.distributed; gloo on CPU, NCCL on GPUs).

    .venv/bin/python benchmarks/training_scaling.py --processes 1 2 --studies 8 --epochs 2

Trains the organ stage on generated studies with each process count (the same global batch), and
prints patches per second (global) and seconds per epoch; writes
``benchmarks/results/training_scaling.{json,md}``.  On a GPU machine one process per GPU is used.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from radcascade.distributed import Distributed, spawn
from radcascade.labels import LabelContract
from radcascade.sample_data import generate_datastore
from radcascade.training import TrainConfig, Trainer, cases_from_folder

REPO = Path(__file__).resolve().parents[1]


def _run(ctx: Distributed, cfg: TrainConfig, cases, model: Path, out: Path) -> None:
    t0 = time.perf_counter()
    result = Trainer(cfg, LabelContract(), model, dist=ctx).fit(cases)
    if ctx.main:
        out.write_text(json.dumps({"seconds": time.perf_counter() - t0, "epochs": result.epochs_done}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--studies", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=4, help="global batch (split across processes)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/training_scaling")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rc-scaling-") as tmp:
        tmp = Path(tmp)
        generate_datastore(tmp / "studies", a.studies, 0, seed=8100, prefix="scale")
        cases = cases_from_folder(tmp / "studies")
        for n in a.processes:
            cfg = TrainConfig(stage="organ", max_epochs=a.epochs, batch_size=a.batch // n, val_fraction=0.0,
                              warm_start=False, samples_per_volume=4)
            timing = tmp / f"timing-{n}.json"
            if n == 1:
                _run(Distributed(), cfg, cases, tmp / f"organ-{n}.pt", timing)
            else:
                spawn(n, _run, cfg, cases, tmp / f"organ-{n}.pt", timing)
            t = json.loads(timing.read_text())
            patches = a.studies * cfg.samples_per_volume * a.epochs
            rows.append({"processes": n, "seconds": round(t["seconds"], 1), "patches_per_s": round(patches / t["seconds"], 2)})
            print(rows[-1], flush=True)
    device = "GPU" if torch.cuda.is_available() else "CPU (gloo)"
    table = "| processes | seconds (incl. caching) | patches / s |\n|---|---|---|\n" + "\n".join(
        f"| {r['processes']} | {r['seconds']} | {r['patches_per_s']} |" for r in rows)
    meta = {"command": f"benchmarks/training_scaling.py --processes {' '.join(map(str, a.processes))} --studies "
                       f"{a.studies} --epochs {a.epochs} --batch {a.batch}", "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}"}
    print(table)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    a.out.with_suffix(".md").write_text(f"# Training throughput\n\n{json.dumps(meta)}\n\n{table}\n")


if __name__ == "__main__":
    main()
