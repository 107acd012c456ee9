"""The lesion classifier against what a radiologist would use instead, on generated lesions.

    .venv/bin/python benchmarks/transfer.py --family matched       # one family (rows appended per cell)
    .venv/bin/python benchmarks/transfer.py --report                # table, plot, paired tests from the rows

Writes ``benchmarks/results/transfer-<family>.json`` (rows, after every cell) and, with
``--report``, ``transfer.md`` and ``transfer.png`` (from the recorded rows). The logic is
:mod:`radcascade.experiments.transfer`.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from radcascade.experiments.transfer import report, run_family
from radcascade.sample_data import FAMILIES

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=FAMILIES, nargs="+", default=list(FAMILIES))
    p.add_argument("--pool", type=int, default=80, help="studies in the training pool")
    p.add_argument("--test", type=int, default=40, help="held-out test studies")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 48], help="training sizes, in studies of the pool")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--depths", type=int, nargs="+", default=[0, 1, 2, 3, 5, 9], help="fine-tuning depths (9 = all)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--cv-folds", type=int, default=3)
    p.add_argument("--cv-repeats", type=int, default=1)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--views", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    p.add_argument("--machine", default=f"{platform.machine()}, CPU only")
    p.add_argument("--report", action="store_true", help="only write table, plot and paired tests from the rows")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.report:
        report(a.out)
        return
    torch.set_num_threads(a.threads)
    a.machine += f", {a.threads} torch thread(s), torch {torch.__version__}"
    import sys

    a.command = "python benchmarks/transfer.py " + " ".join(sys.argv[1:])
    for family in a.family:
        run_family(a, family)


if __name__ == "__main__":
    main()
