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


def test_sigkill_during_label_saves_loses_nothing_acknowledged(tmp_path):
    studies = make_studies(tmp_path / "studies", labelled=1, unlabelled=4, seed=11)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    copy_weights(model_dir)
    server = start_server(studies, model_dir, tmp_path / "server1.log")
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
    time.sleep(4.0)
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
