"""Paths of the benchmark scripts, and the helpers they share (kept in :mod:`radcascade.experiments.common`).

Benchmarks are run as ``.venv/bin/python benchmarks/<script>.py``; Python puts ``benchmarks/`` first
on ``sys.path``, so ``import benchlib`` works from them.
"""

from __future__ import annotations

from pathlib import Path

from radcascade.experiments.common import (
    CT_LABEL,
    CT_SIZE,
    LARGE_CT_LABEL,
    LARGE_CT_ORGAN,
    LARGE_CT_SIZE,
    MODEL_FILES,
    PRETRAINED,
    SAMPLE_LABEL,
    SAMPLE_SIZE,
    STAGES,
    GpuMonitor,
    decode_result,
    install_weights,
    mean_std,
    median_stages,
    meta,
    parse_gpu_sample,
    pyplot,
    start_cascade_server,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
__all__ = ["HERE", "RESULTS", "CT_LABEL", "CT_SIZE", "LARGE_CT_LABEL", "LARGE_CT_ORGAN", "LARGE_CT_SIZE", "MODEL_FILES", "PRETRAINED", "SAMPLE_LABEL", "SAMPLE_SIZE", "STAGES",
           "GpuMonitor", "decode_result", "install_weights", "mean_std", "median_stages", "meta", "parse_gpu_sample",
           "pyplot", "start_cascade_server"]
