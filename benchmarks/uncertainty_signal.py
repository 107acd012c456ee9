"""Does a study's uncertainty point at what the models get wrong? Aggregations compared, no server.

Active learning only beats random if the per-study score ranks the studies the models handle
badly (or that hold what they have not learned: lesions) above the rest. This measures that
directly, before any retraining loop: per seed, the loop's starting models are trained (as in
``active_learning.py``), every pool study is scored and segmented, and each candidate score is
compared with the truth:

* ``auroc_lesion``: ROC AUC of the score for "the study holds a lesion" (the studies a screening
  worklist should hand out first);
* ``rho_lesion_err``: Spearman correlation with the study's lesion error, 1 - lesion Dice
  (studies where both prediction and truth are empty count as 0 error);
* ``rho_organ_err``: Spearman correlation with 1 - organ Dice;
* ``auroc_low_dose`` (with ``--low-dose-pool``): ROC AUC for "the study comes from the low-dose
  protocol the starting models never saw".

Candidate scores: per stage (``organ``, ``lesion``) and kind (``mc`` = MC-dropout entropy, ``tta`` =
test-time-augmentation spread), the voxel values inside the predicted organ aggregated as the
``mean`` (what the app used until 2026-11-23) or the mean of the top ``--top``-fraction voxels
(``peak``: a small lesion is <1% of an organ, a mean dilutes it); plus the stored ``epistemic``,
``tta``, ``classifier`` and ``combined`` values the app ranks by.

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
