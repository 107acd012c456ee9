"""The prepared GPU check runs to completion on the CPU (small study), as it must before a GPU is lent."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--size",
                           "small", "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = out.read_text()
    assert "| organ |" in report and "| total |" in report and "Organ agreement AMP on vs off (IoU): 1.0000" in report
    assert "world size 1 on cpu" in report
