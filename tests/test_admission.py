"""Inference admission (429/503 with Retry-After) and a responsive ``/info`` while networks run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests
from fastapi import HTTPException

from conftest import copy_weights, make_studies, start_server, stop_server
from radcascade.labels import LabelContract
from radcascade.sample_data import generate_study, write_study
from radcascade.serving.admission import Admission, AdmissionPolicy


def _hold(gate: Admission, release: threading.Event, entered: threading.Event, errors: list):
    try:
        with gate.admit():
            entered.set()
            release.wait(10)
    except HTTPException as e:
        errors.append(e)


def _occupy(gate: Admission, release: threading.Event, errors: list) -> tuple[threading.Thread, threading.Event]:
    """A thread that takes (or waits for) a slot and holds it until ``release``."""
    entered = threading.Event()
    thread = threading.Thread(target=_hold, args=(gate, release, entered, errors))
    thread.start()
    return thread, entered


def test_admission_runs_queues_then_refuses_with_retry_after():
    gate = Admission(AdmissionPolicy(slots=1, queue=1, wait_s=10))
    release, errors = threading.Event(), []
    running, entered = _occupy(gate, release, errors)
    assert entered.wait(5)
    queued, queued_entered = _occupy(gate, release, errors)
    deadline = time.time() + 5
    while gate.stats().waiting < 1 and time.time() < deadline:
        time.sleep(0.01)
    assert gate.stats().running == 1 and gate.stats().waiting == 1
    with pytest.raises(HTTPException) as refused:
        with gate.admit():
            pass
    assert refused.value.status_code == 429
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert "1 waiting" in refused.value.detail
    release.set()
    running.join(5)
    queued.join(5)
    assert queued_entered.is_set() and not errors
    stats = gate.stats()
    assert (stats.running, stats.waiting, stats.admitted, stats.refused_busy) == (0, 0, 2, 1)


def test_admission_gives_503_after_waiting_too_long():
    gate = Admission(AdmissionPolicy(slots=1, queue=4, wait_s=0.3))
    release, errors = threading.Event(), []
    holder, entered = _occupy(gate, release, errors)
    assert entered.wait(5)
    t0 = time.perf_counter()
    with pytest.raises(HTTPException) as late:
        with gate.admit():
            pass
    assert late.value.status_code == 503 and "Retry-After" in late.value.headers
    assert 0.25 < time.perf_counter() - t0 < 3
    release.set()
    holder.join(5)
    assert gate.stats().timed_out == 1 and gate.stats().running == 0


@pytest.mark.parametrize("conf", [{"infer_slots": "0"}, {"infer_queue": "-1"}, {"infer_wait_s": "0"}])
def test_admission_policy_rejects_nonsense(conf):
    with pytest.raises(ValueError):
        AdmissionPolicy.from_conf(conf)


@pytest.mark.server
def test_info_stays_responsive_and_overload_gets_429(tmp_path):
    """Six clients at once against slots=1, queue=1: each gets its label or a 429 with Retry-After
    (never a 5xx), and ``/info`` answers within a fraction of an inference while they run."""
    studies = make_studies(tmp_path / "studies", labelled=1, unlabelled=0, seed=5)
    # A bigger study so one inference takes long enough to measure the event loop against it.
    big = generate_study(123, "big", shape=(256, 256, 96), spacing=(1.5, 1.5, 3.0))
    write_study(big, studies.folder, with_label=False, contract=LabelContract())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    copy_weights(model_dir)
    server = start_server(studies, model_dir, tmp_path / "server.log",
                          {"infer_slots": "1", "infer_queue": "1", "infer_wait_s": "120"})
    try:
        url = server.url
        # /infer/lesion runs the networks every time (a repeated cascade on a study is answered from its
        # stored result, which would never queue).
        warm = requests.post(f"{url}/infer/lesion?image=big", data={"params": "{}"}, timeout=300)
        assert warm.status_code == 200
        answers: list[tuple[int, float, str | None]] = []

        def infer():
            t0 = time.perf_counter()
            r = requests.post(f"{url}/infer/lesion?image=big&output=json", data={"params": "{}"}, timeout=300)
            answers.append((r.status_code, time.perf_counter() - t0, r.headers.get("Retry-After")))

        threads = [threading.Thread(target=infer) for _ in range(6)]
        for t in threads:
            t.start()
        info_latency = []
        while any(t.is_alive() for t in threads):
            t0 = time.perf_counter()
            r = requests.get(f"{url}/info/", timeout=60)
            info_latency.append(time.perf_counter() - t0)
            assert r.status_code == 200
            time.sleep(0.05)
        for t in threads:
            t.join()
        codes = sorted(code for code, _, _ in answers)
        assert set(codes) <= {200, 429}, codes
        assert codes.count(200) >= 2 and codes.count(429) >= 1, codes
        for code, _, retry_after in answers:
            if code == 429:
                assert int(retry_after) >= 1
        slowest_infer = max(s for code, s, _ in answers if code == 200)
        worst_info = max(info_latency)
        print(f"/info during inference: n={len(info_latency)} median {np.median(info_latency):.3f}s "
              f"max {worst_info:.3f}s; inference up to {slowest_infer:.2f}s; answers {codes}")
        # Before the fix /info waited for the whole running inference.
        assert worst_info < max(0.5, 0.3 * slowest_infer), (worst_info, slowest_infer)
        admission = requests.get(f"{url}/info/", timeout=60).json()["admission"]
        assert admission["refused_busy"] == codes.count(429) and admission["running"] == 0
    finally:
        stop_server(server)


@pytest.mark.server
def test_temporary_files_are_removed_even_when_requests_fail(tmp_path):
    """Uploads and results live in the server's temp folder only for the request, failed ones included."""
    studies = make_studies(tmp_path / "studies", labelled=1, unlabelled=1, seed=9)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    copy_weights(model_dir)
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    server = start_server(studies, model_dir, tmp_path / "server.log", env={"TMPDIR": str(server_tmp)})
    # What the server writes there once at start (MONAI Label's logging config) is not per request.
    at_start = {p for p in server_tmp.rglob("*") if p.is_file()}
    try:
        url, image = server.url, studies.unlabelled[0]
        garbage = tmp_path / "garbage.nii.gz"
        garbage.write_bytes(np.random.default_rng(0).bytes(5000))
        good_image = studies.folder / f"{image}.nii.gz"
        answers = []
        for _ in range(2):
            answers.append(requests.post(f"{url}/infer/cascade?image={image}", data={"params": "{}"}, timeout=120))
            with open(good_image, "rb") as f:  # an uploaded image instead of a datastore id
                answers.append(requests.post(f"{url}/infer/cascade", files={"file": ("up.nii.gz", f)},
                                             data={"params": "{}"}, timeout=120))
            with open(garbage, "rb") as f:
                answers.append(requests.post(f"{url}/infer/cascade", files={"file": ("bad.nii.gz", f)},
                                             data={"params": "{}"}, timeout=120))
            with open(garbage, "rb") as f:
                answers.append(requests.put(f"{url}/datastore/label?image={image}&tag=final",
                                            files={"label": ("bad.nii.gz", f)}, timeout=120))
            with open(garbage, "rb") as f:
                answers.append(requests.put(f"{url}/datastore/image?image=new_study",
                                            files={"file": ("bad.nii.gz", f)}, timeout=120))
        assert [a.status_code for a in answers] == [200, 200, 422, 422, 422] * 2
        deadline = time.time() + 10
        leftovers = []
        while time.time() < deadline:
            leftovers = sorted(str(p) for p in server_tmp.rglob("*") if p.is_file() and p not in at_start)
            if not leftovers:
                break
            time.sleep(0.2)
        assert leftovers == []
    finally:
        stop_server(server)
