"""Start and stop a real ``monailabel start_server`` on 127.0.0.1 (tests, benchmarks, soak runs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "apps" / "radcascade"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def processes(self) -> list[int]:
        """Pids of the launcher and all its descendants (the server proper is a child of the launcher)."""
        return process_tree(self.process.pid)

    def reset_peak_memory(self) -> dict[int, float]:
        """Reset every server process's peak resident memory (``VmHWM``, Linux ``clear_refs``);
        return their current resident memory (MiB) as the baseline for :meth:`memory_rise_mb`."""
        base = {}
        for pid in self.processes():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                continue
            kb = _status_kb(pid, "VmRSS")
            if kb is not None:
                base[pid] = kb / 1024.0
        return base

    def memory_rise_mb(self, baseline: dict[int, float]) -> float | None:
        """The largest rise of a server process's peak memory over ``baseline`` (MiB); None when
        nothing could be reset (no measurement, rather than a reassuring 0)."""
        peaks = self.peak_memory_mb()
        rises = [peaks[pid] - rss for pid, rss in baseline.items() if pid in peaks]
        return max(rises) if rises else None

    def peak_memory_mb(self) -> dict[int, float]:
        """Peak resident memory (``VmHWM``) of every live process of the server, in MiB, by pid."""
        out = {}
        for pid in self.processes():
            kb = _status_kb(pid, "VmHWM")
            if kb is not None:
                out[pid] = kb / 1024.0
        return out


def start_server(studies: Path, log: Path, conf: dict[str, str] | None = None, app_dir: Path = APP_DIR,
                 env: dict[str, str] | None = None, timeout_s: float = 180,
                 wrapper: list[str] | None = None) -> LocalServer:
    """Run the app as a user would (``monailabel start_server``) and wait until ``/info/`` answers.

    ``wrapper`` prefixes the command (e.g. ``strace -f ... --``) to watch the whole server process tree.
    """
    port = free_port()
    bin_dir = Path(sys.executable).parent
    full_env = {
        **os.environ,
        # `monailabel start_server` and its training subprocess run the `python` found on PATH.
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "MONAI_LABEL_TRACKING_ENABLED": "false",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    cmd = [*(wrapper or []), str(bin_dir / "monailabel"), "start_server", "--app", str(app_dir), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port)]
    for k, v in (conf or {}).items():
        cmd += ["--conf", k, str(v)]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    server = LocalServer(f"http://127.0.0.1:{port}", proc, log)
    if wait_until_answering(proc, server.url + "/info/", timeout_s, interval_s=1.0, log=log):
        return server
    server.stop()
    raise RuntimeError(f"server did not answer within {timeout_s}s:\n{log.read_text()[-3000:]}")


def wait_until_answering(proc: subprocess.Popen, url: str, timeout_s: float, interval_s: float, log: Path) -> bool:
    """Poll ``url`` until it answers 200 (True) or ``timeout_s`` passes (False); raise if ``proc`` exits."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{Path(proc.args[0]).name} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(interval_s)
    return False


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def machine_description() -> str:
    """CPU model, core count, GPU and torch version, for benchmark records."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"
