"""Training throughput with 1 and N processes (torch.distributed; gloo on CPU, NCCL on GPUs).

    .venv/bin/python benchmarks/training_scaling.py --processes 1 2 --studies 8 --epochs 2

Trains the organ stage on generated studies with each process count (the same global batch), and
prints patches per second (global) and seconds per epoch; writes
``benchmarks/results/training_scaling.{json,md}``.  On a GPU machine one process per GPU is used.
The logic is :mod:`radcascade.experiments.training_scaling`; ``--from-json`` rebuilds the report.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from radcascade.experiments.training_scaling import load, measure, write

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--studies", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=4, help="global batch (split across processes)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/training_scaling")
    p.add_argument("--from-json", action="store_true", help="rebuild the Markdown from the recorded JSON")
    a = p.parse_args()
    if a.from_json:
        rows, meta = load(a.out.with_suffix(".json"))
    else:
        with tempfile.TemporaryDirectory(prefix="rc-scaling-") as tmp:
            rows = measure(a.processes, a.studies, a.epochs, a.batch, Path(tmp))
        device = "GPU" if torch.cuda.is_available() else "CPU (gloo)"
        meta = {"command": f"benchmarks/training_scaling.py --processes {' '.join(map(str, a.processes))} --studies "
                           f"{a.studies} --epochs {a.epochs} --batch {a.batch}", "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}"}
    print(write(rows, meta, a.out))


if __name__ == "__main__":
    main()
