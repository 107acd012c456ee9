"""Reliability run of issue 13: schemathesis over every route until >= N cases, with strace watching writes.

    python benchmarks/fuzz_server.py --cases 30000 --out benchmarks/results/fuzz_server

One real server (``monailabel start_server`` on generated studies, own TMPDIR and HOME) runs under
``strace -f`` (every file-creating, -renaming or -removing syscall of the whole process tree). Then:

1. the hostile uploads of ``radcascade.hostile`` (decompression bombs on every upload route, a tar
   slip archive), each with the server's peak-memory rise measured (``VmHWM`` reset per request);
2. rounds of ``st run`` (checks: no 5xx, documented status and content type, response schema, no
   response slower than the timeout), new seed each round, until ``--cases`` cases ran or ``--hours``
   passed; the peak-memory rise of each round is recorded too (every upload the fuzzer sends is tiny);
3. the strace log: every write outside the studies folder, the model folder, TMPDIR and HOME is
   listed (must be none), and TMPDIR / HOME must be back to their state at start.

Writes ``<out>.json`` and ``<out>.md`` (command, machine, date, figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import copy_weights, make_studies  # noqa: E402
from radcascade import hostile, localserver  # noqa: E402
from radcascade.fuzzing import file_writes, run_schemathesis, strace_wrapper, writes_outside  # noqa: E402


def _mb(value: float | None) -> float | None:
    """MiB to one decimal; None = not measurable here (/proc/<pid>/clear_refs closed)."""
    return None if value is None else round(value, 1)


def _state(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def warm_up(server: localserver.LocalServer, url: str, studies) -> dict:
    """One inference per model on a study (networks loaded, buffers allocated), with its memory rise:
    the rounds after it then show the steady state."""
    baseline = server.reset_peak_memory()
    models = sorted(requests.get(f"{url}/info/", timeout=60).json()["models"])
    codes = [requests.post(f"{url}/infer/{m}?image={studies.labelled[0]}&output=json", timeout=300).status_code
             for m in models]
    return {"models": models, "status": codes, "memory_rise_mb": _mb(server.memory_rise_mb(baseline))}


def hostile_uploads(server: localserver.LocalServer, url: str, work: Path, studies) -> list[dict]:
    image = studies.folder / f"{studies.labelled[0]}.nii.gz"
    out = []
    for bomb in hostile.bomb_uploads(work, image, studies.labelled[0]):
        baseline = server.reset_peak_memory()
        with open(bomb.file, "rb") as f:
            r = requests.request(bomb.method, url + bomb.path, files={bomb.field: (bomb.file.name, f)}, timeout=300)
        out.append({"name": bomb.name, "route": f"{bomb.method} {bomb.path.split('?')[0]}",
                    "upload_mb": round(bomb.file.stat().st_size / 2**20, 2),
                    "inflates_to_mb": round(hostile.inflated_size(bomb.file) / 2**20),
                    "status": r.status_code, "memory_rise_mb": _mb(server.memory_rise_mb(baseline))})
    # Control: a valid upload that is inflated in full (checks the memory measurement sees real work).
    control = hostile.valid_image(work / "control.nii.gz")
    baseline = server.reset_peak_memory()
    with open(control, "rb") as f:
        r = requests.put(f"{url}/datastore/image?image=control", files={"file": (control.name, f)}, timeout=300)
    out.append({"name": "control: valid 512x512x160 int16 image", "route": "PUT /datastore/image",
                "upload_mb": round(control.stat().st_size / 2**20, 2),
                "inflates_to_mb": round(hostile.inflated_size(control) / 2**20), "status": r.status_code,
                "memory_rise_mb": _mb(server.memory_rise_mb(baseline))})
    slip = hostile.tar_slip(work / "slip.tar", ["../../../../tmp/radcascade-slip.txt", str(work / "abs-slip.txt")])
    for query in ("?uncompress=true", ""):
        with open(slip, "rb") as f:
            r = requests.put(f"{url}/session/{query}", files={"files": ("slip.tar", f)}, timeout=60)
        out.append({"name": f"tar slip{' (uncompress)' if query else ''}", "route": "PUT /session/",
                    "upload_mb": round(slip.stat().st_size / 2**20, 3), "status": r.status_code})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=30000, help="stop once this many cases ran")
    ap.add_argument("--examples", type=int, default=400, help="schemathesis --max-examples per round")
    ap.add_argument("--hours", type=float, default=2.0, help="stop after this long even below --cases")
    ap.add_argument("--seed", type=int, default=1000, help="seed of the first round (+1 per round)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fuzz_server")
    ap.add_argument("--no-strace", action="store_true", help="do not watch writes (strace not available)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (studies, logs, strace log)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the server on the way out (finally below)

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # the code the server runs
    work = Path(tempfile.mkdtemp(prefix="fuzz-server-"))
    studies = make_studies(work / "studies", labelled=3, unlabelled=3, seed=31)
    model_dir, tmp, home, files = work / "model", work / "server-tmp", work / "server-home", work / "files"
    for d in (model_dir, tmp, home, files):
        d.mkdir()
    copy_weights(model_dir)
    trace = work / "strace.log"
    server = localserver.start_server(studies.folder, work / "server.log", {"model_dir": str(model_dir)},
                                      env={"TMPDIR": str(tmp), "HOME": str(home)},
                                      wrapper=None if args.no_strace else strace_wrapper(trace))
    started = time.time()
    rounds = []
    try:
        time.sleep(2)
        at_start = {"tmp": _state(tmp), "home": _state(home)}
        warmup = warm_up(server, server.url, studies)
        uploads = hostile_uploads(server, server.url, files, studies)
        total = 0
        seed = args.seed
        while total < args.cases and time.time() - started < args.hours * 3600:
            baseline = server.reset_peak_memory()
            run = run_schemathesis(server.url, args.examples, REPO / "tests", work / f"round-{seed}.txt", seed=seed)
            total += run.cases
            rounds.append({"seed": seed, "cases": run.cases, "failures": run.failures, "exit_code": run.returncode,
                           "seconds": round(run.seconds), "memory_rise_mb": _mb(server.memory_rise_mb(baseline))})
            print(json.dumps(rounds[-1]), flush=True)
            if run.failures or run.returncode:
                print(run.report[-8000:])
            seed += 1
        time.sleep(5)  # background clean-ups of the last requests
        leftovers = {"tmp": sorted(_state(tmp) - at_start["tmp"]), "home": sorted(_state(home) - at_start["home"])}
    finally:
        server.stop()
    writes = [] if args.no_strace else file_writes(trace)
    # MONAI Label's own log (<app>/logs/app.log) is opened once at start-up by its logging config.
    allowed = [studies.folder, model_dir, tmp, home, localserver.APP_DIR / "logs"]
    outside = writes_outside(writes, allowed) if writes else []
    result = {
        "command": "python benchmarks/fuzz_server.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "commit": commit,
        "machine": localserver.machine_description(),
        "date": datetime.date.today().isoformat(),
        "cases": sum(r["cases"] for r in rounds),
        "failures": sum(r["failures"] for r in rounds),
        "nonzero_exit_rounds": sum(1 for r in rounds if r["exit_code"]),
        "hours": round((time.time() - started) / 3600, 2),
        "rounds": rounds,
        "warm_up": warmup,
        "hostile_uploads": uploads,
        "max_upload_memory_rise_mb": max((u["memory_rise_mb"] for u in uploads if u.get("memory_rise_mb") is not None),
                                         default=None),
        "max_round_memory_rise_mb": max((r["memory_rise_mb"] for r in rounds if r["memory_rise_mb"] is not None),
                                        default=None),
        "writes_watched": len(writes),
        "writes_outside_allowed": [w.__dict__ for w in outside],
        "leftovers": leftovers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))
    if args.keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    ok = (not result["failures"] and not result["nonzero_exit_rounds"] and not outside
          and not leftovers["tmp"] and not leftovers["home"])
    return 0 if ok else 1


def report(r: dict) -> str:
    lines = [f"# Reliability: schemathesis over every route ({r['date']})", "",
             f"Command: `{r['command']}` (commit {r['commit']})  ", f"Machine: {r['machine']}", "",
             f"- cases: **{r['cases']}** in {len(r['rounds'])} rounds ({r['hours']} h); failures (5xx, schema, "
             f"undocumented status, hang): **{r['failures']}**; rounds with non-zero exit: {r['nonzero_exit_rounds']}",
             f"- file writes watched (strace, whole process tree): {r['writes_watched']}; outside the studies, "
             f"model, TMPDIR and HOME folders (and MONAI Label's start-up log, <app>/logs/app.log): "
             f"**{len(r['writes_outside_allowed'])}**",
             f"- left in TMPDIR / HOME after the run: {len(r['leftovers']['tmp'])} / {len(r['leftovers']['home'])}",
             f"- peak server memory rise: hostile uploads max **{r['max_upload_memory_rise_mb']} MiB**; fuzz rounds "
             f"(every request, inference included) max {r['max_round_memory_rise_mb']} MiB; warm-up (one inference "
             f"per model, {r['warm_up']['status']}) {r['warm_up']['memory_rise_mb']} MiB", "",
             "| hostile upload | route | MB sent | inflates to MB | status | memory rise MiB |", "|---|---|---|---|---|---|"]
    for u in r["hostile_uploads"]:
        lines.append(f"| {u['name']} | {u['route']} | {u['upload_mb']} | {u.get('inflates_to_mb', '')} | {u['status']} "
                     f"| {u.get('memory_rise_mb', '')} |")
    lines += ["", "| round seed | cases | failures | exit | seconds | memory rise MiB |", "|---|---|---|---|---|---|"]
    for x in r["rounds"]:
        lines.append(f"| {x['seed']} | {x['cases']} | {x['failures']} | {x['exit_code']} | {x['seconds']} "
                     f"| {x['memory_rise_mb']} |")
    if r["writes_outside_allowed"]:
        lines += ["", "Writes outside the allowed folders:", ""]
        lines += [f"- {w['syscall']} {w['path']}" for w in r["writes_outside_allowed"][:50]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
