"""The cascade against the stock MONAI Label radiology app's `segmentation` model, head to head.

    .venv/bin/python benchmarks/stock_comparison.py --minutes 10          # measured run (~45 min, 2 cores)
    .venv/bin/python benchmarks/stock_comparison.py --minutes 1 --train 5 --sample-test 1 --sample-shape 64 64 24 --ct-test 0 --repeats 1  # smoke

Prints a table and writes ``benchmarks/results/stock_comparison.{json,md,png}``; ``--from-json FILE``
writes the .md and .png of a recorded results file again. The logic is
:mod:`radcascade.experiments.stock_comparison` (lesion detection: ``radcascade.evaluation``).
"""

from __future__ import annotations

import sys

from benchlib import RESULTS
from radcascade.experiments.stock_comparison import build_parser, command_line, run
from radcascade.experiments.stock_report import render_from_json, write_results


def main() -> None:
    a = build_parser(RESULTS).parse_args()
    if a.from_json:
        render_from_json(a.from_json)
        return
    res = run(a, command_line(sys.argv[1:]))
    write_results(res, a, a.out / a.name)


if __name__ == "__main__":
    main()
