"""The cascade against the stock MONAI Label radiology app's `segmentation` model, head to head.

Baseline: the radiology sample app that the monailabel wheel installs (``<venv>/monailabel/
sample-apps/radiology``), started unmodified as a peer server with ``--conf models segmentation
--conf labels <our label names> --conf use_pretrained_model false --conf sam2 false`` (SegResNet
over the whole volume at 1.5 mm, sliding window, ROI 96^3). The benchmark copies that folder to a
scratch directory before starting it (so its trained model and logs land there and not inside the
venv, and no earlier run's model is warm-started); nothing of it is copied into this project.

Both sides train from cold for the same wall-time budget on the same generated studies: the stock
model through its own ``/train/segmentation`` (stopped with ``DELETE /train/`` when the budget is
spent), ours with the project's CLIs (classifier head in deep-features mode, then organ, then
lesion stage; ``--cold``). Then each app is started fresh and measured through the same real
``MONAILabelClient`` on the same held-out studies: end-to-end ``/infer`` latency (one warm-up
request discarded), per-stage latencies, peak host memory of the server processes, organ and
lesion Dice, lesion-wise recall/precision and (ours) classification AUC.

    .venv/bin/python benchmarks/stock_comparison.py --minutes 10          # measured run (~45 min, 2 cores)
    .venv/bin/python benchmarks/stock_comparison.py --minutes 1 --train 5 --sample-test 1 --sample-shape 64 64 24 --ct-test 0 --repeats 1  # smoke

Prints a table and writes ``benchmarks/results/stock_comparison.{json,md,png}``; ``--from-json FILE``
writes the .md and .png of a recorded results file again. The logic is
:mod:`radcascade.experiments.stock_comparison` (lesion detection: ``radcascade.evaluation``).
"""

from __future__ import annotations

import sys

from benchlib import RESULTS
from radcascade.experiments.stock_comparison import build_parser, command_line, render_from_json, run, write_results


def main() -> None:
    a = build_parser(RESULTS).parse_args()
    if a.from_json:
        render_from_json(a.from_json)
        return
    res = run(a, command_line(sys.argv[1:]))
    write_results(res, a, a.out / a.name)


if __name__ == "__main__":
    main()
