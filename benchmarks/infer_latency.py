"""End-to-end `/infer/cascade` latency through a real MONAI Label server, plus per-stage latencies.

Generates a sample-sized study (128x128x48 at 2.5x2.5x4 mm), a CT-sized one (512x512x200 at
0.8x0.8x2.5 mm) and a large-organ CT (512x512x200 at 0.5x0.5x1.28 mm, a ~2 litre organ with 20-24
lesions: the work that grows with organ size and lesion count) outside the repo, starts
``monailabel start_server`` on 127.0.0.1 with the committed starting weights, and times requests
with the real ``MONAILabelClient`` (what Slicer uses). Also times the cascade in-process (no
server, no file transfer) to show the HTTP overhead.

    .venv/bin/python benchmarks/infer_latency.py [--repeats 5] [--device cpu|cuda] [--no-server]
        [--cases sample ct large] [--data DIR]

Prints a table and writes ``benchmarks/results/infer_latency-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchlib import (CT_LABEL, CT_SIZE, LARGE_CT_LABEL, LARGE_CT_ORGAN, LARGE_CT_SIZE, PRETRAINED, RESULTS,
                      SAMPLE_LABEL, SAMPLE_SIZE, STAGES, decode_result, meta)
from benchlib import median_stages as _median_stages
from benchlib import start_cascade_server
from radcascade.cascade import Cascade
from radcascade.labels import LabelContract
from radcascade.sample_data import generate_datastore

# case -> (label, (shape, spacing), extra generation arguments); study i is bench<i>_000 (seed 500 + i)
CASES = {"sample": (SAMPLE_LABEL, SAMPLE_SIZE, {}), "ct": (CT_LABEL, CT_SIZE, {}),
         "large": (LARGE_CT_LABEL, LARGE_CT_SIZE, LARGE_CT_ORGAN)}


def bench_server(studies: Path, names: dict[str, str], repeats: int, work: Path, device: str) -> dict:
    from monailabel.client import MONAILabelClient

    server = start_cascade_server(studies, work, device)
    try:
        client = MONAILabelClient(server.url, tmpdir=str(work / "client"))
        out = {}
        for label, image_id in names.items():
            client.infer("cascade", image_id, {"fresh": True})  # warm-up (first request loads the models)
            walls, results = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _, res = client.infer("cascade", image_id, {"fresh": True})
                walls.append(time.perf_counter() - t0)
                results.append(decode_result(res))
            out[label] = {"end_to_end_s": statistics.median(walls), "stages_s": _median_stages(results),
                          "end_to_end_min_s": min(walls), "lesions": results[-1]["lesion_count"],
                          "organ_ml": results[-1]["organ"]["volume_ml"]}
        return out
    finally:
        server.stop()


def bench_in_process(studies: Path, names: dict[str, str], repeats: int, device: str, knobs: dict | None = None) -> dict:
    """``knobs``: technique trials on the lesion stage's sliding window (``overlap``, ``sw_batch_size``) and
    ``inference_mode`` (run under ``torch.inference_mode`` instead of the stages' ``no_grad`` alone)."""
    knobs = knobs or {}
    cascade = Cascade.in_folder(LabelContract(), PRETRAINED, torch.device(device))
    for k in ("overlap", "sw_batch_size"):
        if knobs.get(k) is not None:
            setattr(cascade.lesion_stage, k, knobs[k])
    mode = torch.inference_mode if knobs.get("inference_mode") else contextlib.nullcontext
    out = {}
    for label, image_id in names.items():
        path = studies / f"{image_id}.nii.gz"
        with mode():
            cascade.run_file(path)
        walls, results = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with mode():
                volume, result = cascade.run_file(path)
            walls.append(time.perf_counter() - t0)
            results.append({"latencies": result.latencies_s})
        out[label] = {"end_to_end_s": statistics.median(walls), "stages_s": _median_stages(results),
                      "end_to_end_min_s": min(walls), "lesions": len(result.lesions),
                      "organ_ml": round(result.organ_volume_ml, 1)}
        del volume
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-server", action="store_true", help="in-process timings only")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--overlap", type=float, default=None, help="trial: lesion sliding-window overlap (in-process)")
    p.add_argument("--sw-batch-size", type=int, default=None, help="trial: lesion sliding-window batch (in-process)")
    p.add_argument("--inference-mode", action="store_true", help="trial: torch.inference_mode (in-process)")
    p.add_argument("--threads", type=int, default=None, help="trial: torch.set_num_threads (in-process)")
    p.add_argument("--tag", default="", help="suffix for the result files of a trial")
    p.add_argument("--data", type=Path, default=None, help="keep/reuse the generated studies in this folder")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                   help="volumes to time (the large-organ CT takes ~3 min to generate on 2 cores)")
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="radcascade-bench-"))
    studies = a.data or work / "studies"
    names = {}
    for i, (case, (label, (shape, spacing), extra)) in enumerate(CASES.items()):
        if case not in a.cases:
            continue
        names[label] = f"bench{i}_000"
        if (studies / f"{names[label]}.nii.gz").exists():
            continue  # --data: generated by an earlier run (same seeds)
        print(f"generating {label} ...", flush=True)
        generate_datastore(studies, 0, 1, seed=500 + i, shape=shape, spacing=spacing, prefix=f"bench{i}", **extra)
    if a.threads:
        torch.set_num_threads(a.threads)
    knobs = {"overlap": a.overlap, "sw_batch_size": a.sw_batch_size, "inference_mode": a.inference_mode,
             "threads": a.threads}
    rows = {"in-process": bench_in_process(studies, names, a.repeats, a.device, knobs)}
    if not a.no_server:
        rows["server /infer/cascade"] = bench_server(studies, names, a.repeats, work, a.device)

    header = ("| path | volume | organ ml | lesions | end-to-end s (median) | min s | "
              + " | ".join(f"{s} s" for s in STAGES) + " |")
    lines = [header, "|" + "---|" * (6 + len(STAGES))]
    for path, per_size in rows.items():
        for label, r in per_size.items():
            stages = " | ".join("-" if r["stages_s"][s] is None else f"{r['stages_s'][s]:.3f}" for s in STAGES)
            lines.append(f"| {path} | {label} | {r['organ_ml']:.0f} | {r['lesions']} | {r['end_to_end_s']:.3f} | "
                         f"{r['end_to_end_min_s']:.3f} | {stages} |")
    table = "\n".join(lines)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    info = meta(
        ".venv/bin/python benchmarks/infer_latency.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]),
        repeats=a.repeats, knobs=knobs,
        note="median of repeats after one warm-up request; 'total' is inside the infer task, "
             "end-to-end adds HTTP, multipart encoding and the client writing the label file",
    )
    stem = a.out / f"infer_latency-{a.device}{'-' + a.tag if a.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps({**info, "results": rows}, indent=1))
    stem.with_suffix(".md").write_text(
        f"# /infer/cascade latency ({a.device})\n\n- command: `{info['command']}`\n- machine: {info['machine']}\n"
        f"- date: {info['date']}\n- {info['note']}\n\n{table}\n"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
