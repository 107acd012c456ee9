"""Does uncertainty-driven "Next sample" beat random? A simulated Slicer annotation loop, no server.

    .venv/bin/python benchmarks/active_learning.py            # the recorded run (CPU, 1 thread, ~35 min)
    .venv/bin/python benchmarks/active_learning.py --quick    # a smoke run (~2 min)

Writes ``benchmarks/results/active_learning.{json,md,png}``; ``--from-json FILE`` writes the .md and
.png of a recorded results file again. The logic is :mod:`radcascade.experiments.annotation_loop`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from radcascade.experiments.annotation_loop import (STRATEGIES, apply_defaults, default_stem_name, load_results, merge,
                                                    render_results, run, write_results)

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--initial", type=int, default=3, help="labelled studies to start with")
    p.add_argument("--pool", type=int, default=15, help="unlabelled studies to pick from")
    p.add_argument("--per-round", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--test", type=int, default=16, help="held-out test studies")
    p.add_argument("--initial-epochs", type=int, default=30, help="round 0 (from scratch)")
    p.add_argument("--epochs", type=int, default=8, help="every later round (warm start)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: these small networks gain little from more, and on a shared "
                        "machine oversubscribed OpenMP threads are 10-20x slower)")
    p.add_argument("--lesion-free-pool", type=float, default=0.0,
                   help="share of the pool generated without lesions (a screening worklist); 0: every study "
                        "draws 0-5 lesions")
    p.add_argument("--low-dose-pool", type=float, default=0.0,
                   help="share of the pool from a low-dose protocol the starting studies never show (a new scanner "
                        "or protocol on the worklist)")
    p.add_argument("--low-dose-test", type=float, default=None,
                   help="share of the test set from the low-dose protocol (default: as --low-dose-pool)")
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="write one report (--name) from results files of the same settings (disjoint seeds, or "
                        "other strategies on shared seeds)")
    p.add_argument("--name", default=None, help="results file stem (default: active_learning[-screening][-quick])")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--from-json", type=Path, default=None, metavar="JSON",
                   help="only write the .md and .png of this results file again (in --out, stem --name or its own)")
    a = p.parse_args()
    if a.from_json:
        record, rows = load_results(a.from_json)
        return render_results(a.out / (a.name or a.from_json.stem), record, rows)
    if a.merge:
        return merge(a.merge, a.out / (a.name or "active_learning-merged"))
    apply_defaults(a)
    cmd = "nice -n 10 .venv/bin/python " + " ".join(["benchmarks/active_learning.py", *sys.argv[1:]])
    record, rows = run(a, cmd)
    a.out.mkdir(parents=True, exist_ok=True)
    write_results(a.out / default_stem_name(a), record, rows)


if __name__ == "__main__":
    main()
