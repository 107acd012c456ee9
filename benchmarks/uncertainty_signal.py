"""Does a study's uncertainty point at what the models get wrong? Aggregations compared, no server.

    nice -n 10 .venv/bin/python benchmarks/uncertainty_signal.py --seeds 0 1 2 3 --initial 8

Writes ``benchmarks/results/uncertainty_signal[-NAME].{json,md}``; ``--from-json FILE`` writes the
.md of a recorded results file again. The logic is :mod:`radcascade.experiments.uncertainty_signal`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from radcascade.experiments.uncertainty_signal import markdown, run, table
from benchlib import RESULTS, meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--initial", type=int, default=3, help="labelled studies the starting models train on")
    p.add_argument("--initial-epochs", type=int, default=30)
    p.add_argument("--pool", type=int, default=24)
    p.add_argument("--lesion-free-pool", type=float, default=0.75)
    p.add_argument("--low-dose-pool", type=float, default=0.0,
                   help="share of the pool from the low-dose protocol (see active_learning.py)")
    p.add_argument("--top", type=float, default=0.01, help="fraction of organ voxels a `peak` score averages")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default=None)
    p.add_argument("--from-json", type=Path, default=None, metavar="JSON",
                   help="only write the .md of this results file again (beside it)")
    a = p.parse_args()
    if a.from_json:
        a.from_json.with_suffix(".md").write_text(markdown(json.loads(a.from_json.read_text())))
        return print(f"wrote {a.from_json.with_suffix('.md')}")
    t0 = time.time()
    per_seed = run(a)
    print(table(per_seed, bool(a.low_dose_pool)))
    cmd = "nice -n 10 .venv/bin/python " + " ".join(["benchmarks/uncertainty_signal.py", *sys.argv[1:]])
    record = {**meta(cmd), "minutes": round((time.time() - t0) / 60, 1),
              **{k: v for k, v in vars(a).items() if k not in ("name", "from_json")}, "per_seed": per_seed}
    stem = RESULTS / ("uncertainty_signal" + (f"-{a.name}" if a.name else ""))
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    stem.with_suffix(".md").write_text(markdown(record))
    print(f"wrote {stem}.{{json,md}}")


if __name__ == "__main__":
    main()
