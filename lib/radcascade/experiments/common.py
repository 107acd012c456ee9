"""What the experiments share: volume sizes, our server with given weights, result decoding, run
records, ``mean ± std``, plots, GPU sampling."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

from radcascade import localserver
from radcascade.cascade import MODEL_FILES
from radcascade.sample_data import DEFAULT_SHAPE, DEFAULT_SPACING

PRETRAINED = localserver.APP_DIR / "pretrained"

SAMPLE_SIZE = (DEFAULT_SHAPE, DEFAULT_SPACING)  # 128x128x48 @ 2.5x2.5x4 mm
CT_SIZE = ((512, 512, 200), (0.8, 0.8, 2.5))  # a typical abdominal CT
SAMPLE_LABEL = "sample 128x128x48 @2.5x2.5x4mm"
CT_LABEL = "CT 512x512x200 @0.8x0.8x2.5mm"
# A real-sized organ on a fine CT: ~2 litres, 20-24 generated lesions (radcascade.sample_data).
LARGE_CT_SIZE = ((512, 512, 200), (0.5, 0.5, 1.28))
LARGE_CT_ORGAN = {"organ_scale": 1.45, "lesions": (20, 24)}
LARGE_CT_LABEL = "large-organ CT 512x512x200 @0.5x0.5x1.28mm"

# Per-stage latencies our /infer/cascade result JSON reports (seconds).
STAGES = ("load", "organ", "lesion", "postprocess", "classifier", "write", "total")


def median_stages(results: list[dict], stages=STAGES) -> dict:
    """Median per stage; None for a stage this path does not have (e.g. no file written in-process)."""
    return {k: statistics.median(r["latencies"][k] for r in results) if k in results[0]["latencies"] else None
            for k in stages}


def decode_result(res) -> dict:
    """``MONAILabelClient.infer`` returns the result JSON as bytes, str or dict depending on the path."""
    if isinstance(res, bytes):
        res = res.decode()
    return json.loads(res) if isinstance(res, str) else dict(res or {})


def install_weights(model_dir: Path, source: Path = PRETRAINED, files=MODEL_FILES) -> Path:
    """Copy model files into a fresh model folder (the app copies nothing over files that exist)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        if (source / f).exists():
            shutil.copy(source / f, model_dir / f)
    return model_dir


def start_cascade_server(studies: Path, work: Path, device: str, weights: Path = PRETRAINED,
                         extra_conf: dict | None = None) -> localserver.LocalServer:
    """Our app (``apps/radcascade``) on ``studies`` with the model files of ``weights``."""
    model_dir = install_weights(work / "model", weights)
    conf = {"model_dir": str(model_dir), "device": device, **(extra_conf or {})}
    return localserver.start_server(studies, work / "server.log", conf)


def meta(command: str, **extra) -> dict:
    return {"command": command, "machine": localserver.machine_description(), "date": time.strftime("%Y-%m-%d"),
            **extra}


def mean_std(values, digits: int = 3) -> str:
    """``mean ± std`` of the values that are not None (population std), ``-`` when there are none."""
    import numpy as np

    v = [x for x in values if x is not None]
    return f"{np.mean(v):.{digits}f} ± {np.std(v):.{digits}f}" if v else "-"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing: no plot")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class GpuMonitor:
    """GPU utilisation and memory, sampled with ``nvidia-smi`` every ``interval_s`` inside a ``with``.

    Where there is no ``nvidia-smi`` (a CPU machine) it samples nothing and :meth:`summary` is None.
    Utilisation is the driver's "percent of time a kernel ran" of GPU 0, memory the device's used MiB
    (all processes: both servers run one at a time here)."""

    QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "--id=0"]

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuMonitor":
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=10).stdout
                self.samples.append(parse_gpu_sample(out))
            except (OSError, subprocess.SubprocessError, ValueError):
                continue

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        util = [u for u, _ in self.samples]
        return {"samples": len(util), "util_mean_pct": round(statistics.fmean(util), 1),
                "util_median_pct": statistics.median(util), "memory_max_mib": max(m for _, m in self.samples)}


def parse_gpu_sample(text: str) -> tuple[float, float]:
    """``"87, 10240"`` (nvidia-smi's csv without header/units) -> (utilisation %, memory MiB)."""
    util, memory = (float(x) for x in text.strip().splitlines()[0].split(","))
    return util, memory
