"""Fuzzing a running server with schemathesis (its ``st`` CLI), and watching every file it writes.

Used by ``tests/test_fuzz_api.py`` (bounded, in CI) and ``benchmarks/fuzz_server.py`` (the long
reliability run). File writes are watched with ``strace`` on the whole server process tree, not
with timestamps: a tar member dated 1970 would hide from an mtime check.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
WRITE_SYSCALLS = ("open", "openat", "creat", "mkdir", "mkdirat", "rename", "renameat", "renameat2", "link", "linkat",
                  "symlink", "symlinkat", "unlink", "unlinkat", "rmdir", "truncate")
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")


@dataclass(frozen=True)
class FuzzRun:
    """What one ``st run`` did: exit code, cases generated, failures found, wall time, its report."""

    returncode: int
    cases: int
    failures: int
    seconds: float
    report: str


def fuzz_values(url: str) -> dict[str, list]:
    """Real values for the fuzz hooks: image ids, models, strategies and label tags of the server."""
    info = requests.get(f"{url}/info/", timeout=60).json()
    objects = requests.get(f"{url}/datastore/?output=all", timeout=60).json()["objects"]
    ids = sorted(objects)
    return {"image": ids, "label": ids, "id": ids, "model": sorted(info.get("models", {})),
            "strategy": sorted(info.get("strategies", {})), "tag": ["final", "original"]}


def run_schemathesis(url: str, max_examples: int, hooks_dir: Path, report: Path, seed: int | None = None,
                     workers: int = 1, timeout_s: float = 120, phases: str = "examples,coverage,fuzzing",
                     values: dict | None = None) -> FuzzRun:
    """``st run`` over the server's OpenAPI: fails on any 5xx, undocumented status or content type,
    response not matching its schema, or a response slower than ``timeout_s`` (a hang)."""
    st = Path(sys.executable).parent / "st"
    cmd = [str(st), "run", f"{url}/openapi.json", "--checks", CHECKS, "--max-examples", str(max_examples),
           "--workers", str(workers), "--phases", phases, "--request-timeout", str(timeout_s),
           "--max-response-time", str(timeout_s), "--continue-on-failure", "--max-failures", "1000",
           "--suppress-health-check", "all", "--warnings", "off"]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks", "NO_COLOR": "1",
           "PYTHONPATH": os.pathsep.join([str(hooks_dir), os.environ.get("PYTHONPATH", "")]),
           "RADCASCADE_FUZZ_VALUES": json.dumps(values if values is not None else fuzz_values(url))}
    t0 = time.perf_counter()
    # cwd: schemathesis and hypothesis keep caches (.schemathesis/, .hypothesis/) in the working folder
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace", cwd=report.parent)
    seconds = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    report.write_text(" ".join(cmd) + "\n\n" + text)
    cases = re.search(r"(\d+) generated", text)
    failures = re.search(r"(\d+) unique failures", text)
    return FuzzRun(proc.returncode, int(cases.group(1)) if cases else 0, int(failures.group(1)) if failures else 0,
                   seconds, text)


# -- watching file writes ----------------------------------------------------------------------------
def strace_wrapper(trace: Path) -> list[str]:
    """Prefix for the server command: trace every file-writing syscall of the whole process tree."""
    return ["strace", "-f", "-qq", "-y", "--seccomp-bpf", "-e", f"trace={','.join(WRITE_SYSCALLS)}",
            "-o", str(trace), "--"]


@dataclass(frozen=True)
class FileWrite:
    pid: int
    syscall: str
    path: str


_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_QUOTED = re.compile(r'(?:(AT_FDCWD|\d+)<([^>]*)>,\s*)?"((?:[^"\\]|\\.)*)"')


def _paths(args: str) -> list[str]:
    """Absolute paths named in a syscall's arguments (``-y`` shows a dirfd's path as ``fd</dir>``)."""
    out = []
    for _, base, name in _QUOTED.findall(args):
        name = name.encode().decode("unicode_escape", errors="replace")
        out.append(name if name.startswith("/") or not base else os.path.join(base, name))
    return out


def file_writes(trace: Path) -> list[FileWrite]:
    """Every successful file-creating, -changing or -removing syscall in an strace log."""
    pending: dict[int, str] = {}
    writes = []
    for line in trace.read_text(errors="replace").splitlines():
        if line.rstrip().endswith("<unfinished ...>"):
            pid = int(line.split()[0])
            pending[pid] = line.rsplit("<unfinished ...>", 1)[0]
            continue
        resumed = re.match(r"^(\d+)\s+<\.\.\. \w+ resumed>(.*)$", line)
        if resumed:
            pid = int(resumed.group(1))
            line = pending.pop(pid, "") + resumed.group(2)
        m = _CALL.match(line)
        if not m or re.search(r"\)\s*=\s*-1", line):
            continue
        pid, syscall, args = int(m.group(1)), m.group(2), m.group(3)
        if syscall in ("open", "openat") and not any(f in args for f in _WRITE_FLAGS):
            continue
        paths = _paths(args)
        if not paths:
            continue
        target = paths[-1] if syscall.startswith(("rename", "link", "symlink")) else paths[0]
        writes.append(FileWrite(pid, syscall, os.path.normpath(target)))
    return writes


def writes_outside(writes: list[FileWrite], allowed: list[Path]) -> list[FileWrite]:
    """The writes under none of the ``allowed`` folders (``/dev`` and ``/proc`` are never files)."""
    roots = [str(Path(a).resolve()) for a in allowed] + ["/dev", "/proc"]
    return [w for w in writes if not any(w.path == r or w.path.startswith(r + "/") for r in roots)]
