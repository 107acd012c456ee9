"""Labels survive a server killed (SIGKILL) in the middle of saving them."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from conftest import copy_weights, make_studies, start_server, stop_server
from radcascade.volumes import read_geometry, read_label

pytestmark = pytest.mark.server


def _study_server(tmp_path, labelled: int, unlabelled: int, seed: int):
    """Tiny generated studies, a copy of the starting weights, and a real server on them."""
    studies = make_studies(tmp_path / "studies", labelled=labelled, unlabelled=unlabelled, seed=seed)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    copy_weights(model_dir)
    return studies, model_dir, start_server(studies, model_dir, tmp_path / "server1.log")


def test_sigkill_during_label_saves_loses_nothing_acknowledged(tmp_path):
    studies, model_dir, server = _study_server(tmp_path, labelled=1, unlabelled=4, seed=11)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path / "client"))
    acknowledged: dict[str, bytes] = {}
    attempted: dict[str, bytes] = {}
    stop = threading.Event()

    def submit():
        i = 0
        while not stop.is_set():
            study = studies.studies[1 + i % 4]
            label = study.label.copy()
            if (i // 4) % 2:  # every other round for a study: a different (still valid) label
                label[label >= 2] = 1
            img = sitk.GetImageFromArray(np.ascontiguousarray(label.transpose(2, 1, 0)))
            img.CopyInformation(sitk.ReadImage(str(studies.folder / f"{study.name}.nii.gz")))
            path = tmp_path / f"submit{i}.nii.gz"
            sitk.WriteImage(img, str(path))
            content = sitk.GetArrayFromImage(img).tobytes()
            attempted[study.name] = content
            try:
                client.save_label(study.name, str(path), tag="final")
                acknowledged[study.name] = content
            except (MONAILabelClientException, OSError, ConnectionError, Exception):
                return  # the server died under us
            i += 1

    worker = threading.Thread(target=submit)
    worker.start()
    # Kill mid-stream: once a few saves went through (a slow machine needs longer), not after a fixed time.
    deadline = time.time() + 60
    while len(acknowledged) < 3 and worker.is_alive() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    os.killpg(server.process.process.pid, signal.SIGKILL)
    server.process.process.wait(10)
    stop.set()
    worker.join(30)
    assert acknowledged, "no label was saved before the kill"

    # Restart on the same folder: it must start, and every label on disk must be whole and valid.
    server2 = start_server(studies, model_dir, tmp_path / "server2.log")
    try:
        client2 = MONAILabelClient(server2.url, tmpdir=str(tmp_path / "client2"))
        objects = client2.datastore()["objects"]
        assert {s.name for s in studies.studies} <= set(objects)
        assert all("final" in objects[name]["labels"] for name in acknowledged)
        final = studies.folder / "labels" / "final"
        for path in final.glob("*.nii*"):
            image = studies.folder / path.name
            label = read_label(path, read_geometry(image))
            assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1, 2, 3}
        for name, content in acknowledged.items():
            on_disk = sitk.GetArrayFromImage(sitk.ReadImage(str(final / f"{name}.nii.gz"))).tobytes()
            # the acknowledged save, or the one in flight when the kill came after its rename
            assert on_disk in (content, attempted[name])
        assert not [p for p in final.iterdir() if p.is_file() and not p.name.endswith(".nii.gz")]
    finally:
        stop_server(server2)


def test_concurrent_clients_while_training_and_saving(tmp_path):
    """Several clients infer while labels are submitted and a training run publishes: no 5xx, valid answers."""
    import json

    import requests

    studies, _, server = _study_server(tmp_path, labelled=3, unlabelled=3, seed=7)
    errors: list[str] = []
    info_latency: list[float] = []
    done = threading.Event()
    try:
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path / "c0"))
        client.train_start("organ", {"max_epochs": 2})

        def infer_worker(k: int):
            c = MONAILabelClient(server.url, tmpdir=str(tmp_path / f"c{k}"))
            for i in range(3):
                image_id = studies.unlabelled[(k + i) % 3]
                try:
                    path, res = c.infer("cascade", image_id, {})
                    res = json.loads(res) if isinstance(res, (str, bytes)) else res
                    arr = sitk.GetArrayFromImage(sitk.ReadImage(path))
                    if not set(np.unique(arr)) <= {0, 1, 2, 3} or "latencies" not in res:
                        errors.append(f"bad answer for {image_id}")
                except MONAILabelClientException as e:
                    if not any(f"Status: {s}" in str(e.msg) for s in (429, 503)):
                        errors.append(str(e.msg)[:200])

        def save_worker():
            c = MONAILabelClient(server.url, tmpdir=str(tmp_path / "cs"))
            for name in studies.labelled:
                path = studies.folder / "labels" / "final" / f"{name}.nii.gz"
                copy = tmp_path / f"resubmit-{name}.nii.gz"
                copy.write_bytes(path.read_bytes())
                try:
                    c.save_label(name, str(copy), tag="final")
                except MONAILabelClientException as e:
                    errors.append(str(e.msg)[:200])

        def info_poller():
            while not done.is_set():
                t0 = time.perf_counter()
                r = requests.get(server.url + "/info/", timeout=60)
                info_latency.append(time.perf_counter() - t0)
                if r.status_code >= 500:
                    errors.append(f"/info {r.status_code}")
                time.sleep(0.2)

        threads = [threading.Thread(target=infer_worker, args=(k,)) for k in range(3)]
        threads += [threading.Thread(target=save_worker)]
        poller = threading.Thread(target=info_poller)
        poller.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        deadline = time.time() + 300
        while client.train_status(check_if_running=True) and time.time() < deadline:
            time.sleep(2)
        done.set()
        poller.join(60)
        assert client.train_status()["status"] == "DONE"
        assert not errors, errors
        # Inference runs off the event loop (serving/admission.py): /info answers while networks run.
        print(f"/info latency during load: median {np.median(info_latency):.3f}s, max {max(info_latency):.3f}s")
    finally:
        done.set()
        stop_server(server)
