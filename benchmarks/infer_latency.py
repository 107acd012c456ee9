"""End-to-end `/infer/cascade` latency through a real MONAI Label server, plus per-stage latencies.

Generates a sample-sized study (128x128x48 at 2.5x2.5x4 mm) and a CT-sized one (512x512x200 at
0.8x0.8x2.5 mm) outside the repo, starts ``monailabel start_server`` on 127.0.0.1 with the
committed starting weights, and times requests with the real ``MONAILabelClient`` (what Slicer
uses). Also times the cascade in-process (no server, no file transfer) to show the HTTP overhead.

    .venv/bin/python benchmarks/infer_latency.py [--repeats 5] [--device cpu|cuda] [--no-server]

Prints a table and writes ``benchmarks/results/infer_latency-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from radcascade import localserver
from radcascade.cascade import Cascade
from radcascade.labels import LabelContract
from radcascade.sample_data import DEFAULT_SHAPE, DEFAULT_SPACING, generate_datastore

HERE = Path(__file__).resolve().parent
PRETRAINED = localserver.APP_DIR / "pretrained"
SIZES = {
    "sample 128x128x48 @2.5x2.5x4mm": (DEFAULT_SHAPE, DEFAULT_SPACING),
    "CT 512x512x200 @0.8x0.8x2.5mm": ((512, 512, 200), (0.8, 0.8, 2.5)),
}
STAGES = ("load", "organ", "lesion", "postprocess", "classifier", "write", "total")


def _median_stages(results: list[dict]) -> dict:
    """Median per stage; None for a stage this path does not have (e.g. no file written in-process)."""
    return {k: statistics.median(r["latencies"][k] for r in results) if k in results[0]["latencies"] else None
            for k in STAGES}


def bench_server(studies: Path, names: dict[str, str], repeats: int, work: Path, device: str) -> dict:
    from monailabel.client import MONAILabelClient

    model_dir = work / "model"
    model_dir.mkdir(exist_ok=True)
    for f in ("organ.pt", "lesion.pt", "classifier.pt"):
        shutil.copy(PRETRAINED / f, model_dir / f)
    server = localserver.start_server(studies, work / "server.log", {"model_dir": str(model_dir), "device": device})
    try:
        client = MONAILabelClient(server.url, tmpdir=str(work / "client"))
        out = {}
        for label, image_id in names.items():
            client.infer("cascade", image_id, {})  # warm-up (first request loads the models)
            walls, results = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _, res = client.infer("cascade", image_id, {})
                walls.append(time.perf_counter() - t0)
                results.append(json.loads(res) if isinstance(res, (str, bytes)) else res)
            out[label] = {"end_to_end_s": statistics.median(walls), "stages_s": _median_stages(results),
                          "lesions": results[-1]["lesion_count"]}
        return out
    finally:
        server.stop()


def bench_in_process(studies: Path, names: dict[str, str], repeats: int, device: str) -> dict:
    cascade = Cascade(LabelContract(), PRETRAINED / "organ.pt", PRETRAINED / "lesion.pt", torch.device(device),
                      classifier_model=PRETRAINED / "classifier.pt")
    out = {}
    for label, image_id in names.items():
        path = studies / f"{image_id}.nii.gz"
        cascade.run_file(path)
        walls, results = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            volume, result = cascade.run_file(path)
            walls.append(time.perf_counter() - t0)
            results.append({"latencies": result.latencies_s})
        out[label] = {"end_to_end_s": statistics.median(walls), "stages_s": _median_stages(results)}
        del volume
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-server", action="store_true", help="in-process timings only")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="radcascade-bench-"))
    studies = work / "studies"
    names = {}
    for i, (label, (shape, spacing)) in enumerate(SIZES.items()):
        print(f"generating {label} ...", flush=True)
        generate_datastore(studies, 0, 1, seed=500 + i, shape=shape, spacing=spacing, prefix=f"bench{i}")
        names[label] = f"bench{i}_000"
    rows = {"in-process": bench_in_process(studies, names, a.repeats, a.device)}
    if not a.no_server:
        rows["server /infer/cascade"] = bench_server(studies, names, a.repeats, work, a.device)

    header = "| path | volume | end-to-end s | " + " | ".join(f"{s} s" for s in STAGES) + " |"
    lines = [header, "|" + "---|" * (3 + len(STAGES))]
    for path, per_size in rows.items():
        for label, r in per_size.items():
            stages = " | ".join("-" if r["stages_s"][s] is None else f"{r['stages_s'][s]:.3f}" for s in STAGES)
            lines.append(f"| {path} | {label} | {r['end_to_end_s']:.3f} | {stages} |")
    table = "\n".join(lines)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": f".venv/bin/python benchmarks/infer_latency.py --repeats {a.repeats} --device {a.device}"
                   + (" --no-server" if a.no_server else ""),
        "machine": localserver.machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "repeats": a.repeats,
        "note": "median of repeats after one warm-up request; 'total' is inside the infer task, "
                "end-to-end adds HTTP, multipart encoding and the client writing the label file",
    }
    stem = a.out / f"infer_latency-{a.device}"
    stem.with_suffix(".json").write_text(json.dumps({**meta, "results": rows}, indent=1))
    stem.with_suffix(".md").write_text(
        f"# /infer/cascade latency ({a.device})\n\n- command: `{meta['command']}`\n- machine: {meta['machine']}\n"
        f"- date: {meta['date']}\n- {meta['note']}\n\n{table}\n"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
