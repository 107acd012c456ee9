"""Schemathesis over the server's own OpenAPI (bounded): no 5xx, no schema violation, no hang.

The long run (>= 30,000 cases, with strace watching every file write) is
``benchmarks/fuzz_server.py``; this one keeps CI to a couple of minutes on 2 cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import start_isolated_server, stop_server
from radcascade.fuzzing import run_schemathesis

pytestmark = pytest.mark.server
TESTS = Path(__file__).parent
MAX_EXAMPLES = 40  # per operation and phase: ~2,000 cases over the 25 operations


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_schemathesis_finds_no_server_error_schema_violation_or_hang(tmp_path):
    isolated = start_isolated_server(tmp_path, labelled=2, unlabelled=2, seed=21)
    server, tmp, home = isolated.server, isolated.tmp, isolated.home
    try:
        at_start = {"tmp": _files(tmp), "home": _files(home)}
        (tmp_path / "fuzzer").mkdir()  # the fuzzer's report and caches (.hypothesis, .schemathesis)
        run = run_schemathesis(server.url, MAX_EXAMPLES, TESTS, tmp_path / "fuzzer" / "report.txt", seed=13)
        print(f"schemathesis: {run.cases} cases in {run.seconds:.0f} s, {run.failures} failures")
        assert run.returncode == 0 and run.failures == 0, run.report[-6000:]
        assert run.cases >= 1000, run.report[-2000:]
        deadline = time.time() + 15
        while time.time() < deadline and (_files(tmp) != at_start["tmp"] or _files(home) != at_start["home"]):
            time.sleep(0.5)
        assert _files(tmp) - at_start["tmp"] == set()
        assert _files(home) - at_start["home"] == set()
        top = {p.split("/")[0] for p in _files(tmp_path)}  # nothing beside the test's own folders
        assert top <= {"studies", "model", "server-tmp", "server-home", "server.log", "fuzzer"}, top
    finally:
        stop_server(server)
