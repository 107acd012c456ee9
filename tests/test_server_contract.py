"""Test of record: the real `monailabel start_server` on 127.0.0.1 driven by the real
`monailabel.client.MONAILabelClient` (what 3D Slicer's MONAI Label module uses)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from conftest import Server, copy_weights, make_studies, start_server, stop_server
from radcascade.labels import LabelContract

pytestmark = pytest.mark.server
CONTRACT = LabelContract()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("server")
    studies = make_studies(root / "studies", labelled=3, unlabelled=3)
    model_dir = root / "model"
    model_dir.mkdir()
    copy_weights(model_dir)
    srv = start_server(studies, model_dir, root / "server.log")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> MONAILabelClient:
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")))


def _read(path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _status(exc: MONAILabelClientException) -> int:
    return int(str(exc.msg).split("Status:")[1].split(";")[0])


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every image and label file under the studies folder (the datastore's content)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.nii*")}


def _write(array: np.ndarray, like: sitk.Image | None, path: Path) -> Path:
    img = sitk.GetImageFromArray(array)
    if like is not None:
        img.CopyInformation(like)
    sitk.WriteImage(img, str(path))
    return path


def test_info_lists_contract_labels_and_cascade_first(client):
    info = client.info()
    assert list(info["models"])[0] == "cascade"
    expected = {"liver": 1, "lesion benign": 2, "lesion malignant": 3}
    assert info["models"]["cascade"]["labels"] == expected
    assert info["models"]["cascade"]["type"] == "segmentation"
    values = sorted(info["models"]["cascade"]["labels"].values())
    assert values == list(range(1, len(values) + 1)), "label values must be contiguous from 1"
    assert set(expected) <= set(info["labels"])
    assert {"organ", "lesion"} <= set(info["trainers"])
    assert "UNTRAINED" not in info["models"]["cascade"]["description"]
    assert "lesion_small: trained" in info["models"]["cascade"]["description"]  # the small-lesion detector
    assert {"first", "random"} <= set(info["strategies"])


def test_next_sample_returns_unlabelled_studies(client, server):
    first = client.next_sample("first", {})
    assert first["id"] in server.studies.unlabelled
    seen = {client.next_sample("random", {})["id"] for _ in range(6)}
    assert seen <= set(server.studies.unlabelled)


def test_infer_cascade_returns_contract_label_on_image_geometry(client, server):
    found = 0
    # the first unlabelled study (Next sample's, maybe answered from its cache) and the one with most lesions
    for image_id in (server.studies.unlabelled[0], _most_lesions(server).name):
        label_path, result = client.infer("cascade", image_id, {})
        if isinstance(result, (bytes, str)):  # the client may hand back raw bytes
            result = json.loads(result)
        label, label_img = _read(label_path)
        _, image = _read(server.studies.folder / f"{image_id}.nii.gz")
        assert label_img.GetSize() == image.GetSize()
        assert np.allclose(label_img.GetSpacing(), image.GetSpacing())
        assert np.allclose(label_img.GetOrigin(), image.GetOrigin())
        assert set(np.unique(label)) <= {0, 1, 2, 3}
        assert (label == 1).sum() > 0, "the starting weights should find the organ"
        assert result["label_names"] == {"background": 0, "liver": 1, "lesion benign": 2, "lesion malignant": 3}
        # Next sample may have run the cascade already: then the stored answer comes back with its timings
        latencies = result["computed_latencies"] if result["cached"] else result["latencies"]
        for stage in ("load", "organ", "lesion", "write", "total"):
            assert latencies[stage] >= 0
        assert result["provisional_classes"] is False  # the committed classifier classifies every lesion
        for lesion in result["lesions"]:
            assert lesion["volume_ml"] > 0 and len(lesion["centroid_mm"]) == 3 and lesion["id"] >= 1
            assert lesion["class_name"] in ("lesion benign", "lesion malignant")
            assert sum(lesion["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
            assert 0 <= lesion["uncertainty"]["entropy"] <= 1
            assert label[tuple(int(round(c)) for c in lesion["centroid_voxel"])[::-1]] in (1, lesion["value"])
        assert result["lesion_count"] == len(result["lesions"])
        # the small-lesion detector the app installed from pretrained/ answers beside the lesion model
        assert set(result["models"]) == {"organ", "lesion", "lesion_small", "classifier"}
        found += result["lesion_count"]
    assert found > 0, "the starting weights should find a lesion in one of the two studies"


def _most_lesions(server):
    """The unlabelled study with the most lesions (the one the tests submit a label for)."""
    return max((s for s in server.studies.studies if s.name in server.studies.unlabelled[1:]), key=lambda s: len(s.lesions))


def test_save_label_maps_slicer_segment_order_by_name(client, server, tmp_path):
    study = _most_lesions(server)
    truth = study.label  # contract values, [x, y, z]
    # Slicer writes values in segment order: here malignant=1, liver=2, benign=3.
    slicer_order = {"lesion malignant": 1, "liver": 2, "lesion benign": 3}
    submitted = np.zeros_like(truth)
    for name, idx in slicer_order.items():
        submitted[truth == CONTRACT.value_of(name)] = idx
    _, image = _read(server.studies.folder / f"{study.name}.nii.gz")
    path = _write(np.ascontiguousarray(submitted.transpose(2, 1, 0)), image, tmp_path / "submitted.nii.gz")
    label_info = [{"name": n, "idx": i} for n, i in slicer_order.items()]
    client.save_label(study.name, str(path), tag="final", params={"label_info": label_info})

    stored, _ = _read(server.studies.folder / "labels" / "final" / f"{study.name}.nii.gz")
    np.testing.assert_array_equal(stored, truth.transpose(2, 1, 0))
    downloaded = client.download_label(study.name, "final")
    np.testing.assert_array_equal(_read(downloaded)[0], truth.transpose(2, 1, 0))


def test_classify_reclassifies_the_submitted_label_and_explains(client, server):
    study = _most_lesions(server)
    label_path, result = client.infer("classify", study.name, {"saliency": True})
    label, img = _read(label_path)
    truth = study.label.transpose(2, 1, 0)
    np.testing.assert_array_equal(label >= 1, truth >= 1)  # organ + lesions as drawn
    np.testing.assert_array_equal(label >= 2, truth >= 2)  # outlines kept, classes re-predicted
    assert set(np.unique(label[truth >= 2])) <= {2, 3}
    assert result["lesion_count"] == len(study.lesions) > 0
    assert result["saliency"]["available"] and len(result["saliency"]["peaks"]) == result["lesion_count"]
    cam, cam_img = _read(client.download_label(study.name, "saliency"))
    assert cam_img.GetSize() == img.GetSize() and cam.max() > 0


def test_uncertainty_scoring_and_strategies(client, server):
    import requests

    res = requests.post(server.url + "/scoring/uncertainty?run_sync=true", json={"passes": 2}, timeout=600)
    assert res.status_code == 200, res.text
    unlabelled = [s for s in server.studies.unlabelled if s != _most_lesions(server).name]
    assert res.json()["scored"] == len(unlabelled)
    infos = {i: requests.get(server.url + "/datastore/image/info", params={"image": i}, timeout=30).json()
             for i in unlabelled}
    for info in infos.values():
        u = info["uncertainty"]
        assert 0 <= u["epistemic"] <= 1 and 0 <= u["tta"] <= 1 and set(u["models"]) >= {"organ", "lesion"}
    by_tta = sorted(unlabelled, key=lambda i: -infos[i]["uncertainty"]["tta"])
    first = client.next_sample("tta", {})  # the same (anonymous) client as the earlier tests
    assert first["id"] == by_tta[0]
    # every study was just handed to that client: another client never gets the same one
    other = MONAILabelClient(server.url, tmpdir=client._tmpdir, client_id="B")
    assert other.next_sample("tta", {}).get("id") != first["id"]
    for strategy in ("combined", "epistemic", "classifier"):
        assert client.next_sample(strategy, {"top_k": 3})["id"] in unlabelled


def _wait_training(client, timeout=600) -> dict:
    deadline = time.time() + timeout
    time.sleep(1)
    while client.train_status(check_if_running=True):
        assert time.time() < deadline, "training did not finish in time"
        time.sleep(2)
    return client.train_status()


def test_train_publishes_new_weights_used_by_next_infer(client, server):
    image_id = server.studies.unlabelled[0]
    _, before = client.infer("cascade", image_id, {})
    t_start = int(time.time())
    for stage in ("organ", "lesion"):
        client.train_start(stage, {"max_epochs": 1})
        status = _wait_training(client)
        assert status["status"] == "DONE", status
        stats = client.info()["train_details"][stage]
        assert stats["status"] == "DONE" and stats["epochs_done"] == 1
        assert stats["start_ts"] >= t_start and stats["published"] is True
        # the labels saved through the API are part of the training set
        assert _most_lesions(server).name in stats["train_cases"] + stats["val_cases"]
    client.train_start("classifier", {"mode": "features"})
    status = _wait_training(client)
    assert status["status"] == "DONE", status
    stats = client.info()["train_details"]["classifier"]
    assert stats["status"] == "DONE" and stats["mode"] == "features" and stats["start_ts"] >= t_start
    assert _most_lesions(server).name in stats["train_studies"] + stats["val_studies"]
    assert not set(stats["train_studies"]) & set(stats["val_studies"])
    _, after = client.infer("cascade", image_id, {})
    for stage in ("organ", "lesion", "classifier"):
        on_disk = _digest(server.model_dir / f"{stage}.pt")
        assert after["models"][stage]["version"] == on_disk
        assert after["models"][stage]["version"] != before["models"][stage]["version"]


# -- bad input: a clear 4xx, the server alive, the datastore unchanged ----------------------------
@pytest.fixture
def unchanged_datastore(server, client):
    before = _snapshot(server.studies.folder)
    yield
    assert _snapshot(server.studies.folder) == before, "bad input changed the datastore"
    assert client.info()["name"] == "radcascade", "server must stay up"


def _expect_4xx(call, status: int | None = None, contains: str = "") -> str:
    with pytest.raises(MONAILabelClientException) as err:
        call()
    code = _status(err.value)
    assert 400 <= code < 500, err.value.msg
    if status:
        assert code == status, err.value.msg
    assert contains.lower() in str(err.value.msg).lower()
    return err.value.msg


def test_unknown_image_id(client, server, unchanged_datastore):
    _expect_4xx(lambda: client.infer("cascade", "no_such_study", {}), 404, "no_such_study")
    label = server.studies.folder / "labels" / "final" / f"{server.studies.labelled[0]}.nii.gz"
    _expect_4xx(lambda: client.save_label("no_such_study", str(label), "final"), 404, "no_such_study")


def test_unknown_model_and_strategy(client, unchanged_datastore):
    _expect_4xx(lambda: client.infer("nope", "study_000", {}), 404, "unknown model")
    _expect_4xx(lambda: client.next_sample("nope", {}), 404, "unknown strategy")


def test_corrupt_and_truncated_uploads(client, server, tmp_path, unchanged_datastore):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    _expect_4xx(lambda: client.upload_image(str(junk), "junk"), 422, "junk")
    good = (server.studies.folder / f"{server.studies.unlabelled[0]}.nii.gz").read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good[: len(good) // 2])
    _expect_4xx(lambda: client.upload_image(str(truncated), "truncated"), 422)


def test_2d_image_upload(client, tmp_path, unchanged_datastore):
    flat = _write(np.zeros((64, 64), np.int16), None, tmp_path / "flat.nii.gz")
    _expect_4xx(lambda: client.upload_image(str(flat), "flat"), 422, "3D")


def test_path_traversal_image_id(client, server, tmp_path, unchanged_datastore):
    src = server.studies.folder / f"{server.studies.unlabelled[0]}.nii.gz"
    _expect_4xx(lambda: client.upload_image(str(src), "../evil"), 422)
    assert not (server.studies.folder.parent / "evil.nii.gz").exists()


def test_label_shape_mismatch(client, server, tmp_path, unchanged_datastore):
    image_id = server.studies.labelled[0]
    wrong = _write(np.zeros((10, 40, 40), np.uint8), None, tmp_path / "wrong.nii.gz")
    _expect_4xx(lambda: client.save_label(image_id, str(wrong), "final"), 422, "size")


def test_unknown_label_name(client, server, tmp_path, unchanged_datastore):
    image_id = server.studies.labelled[0]
    stored = server.studies.folder / "labels" / "final" / f"{image_id}.nii.gz"
    label, img = _read(stored)
    path = _write(label, img, tmp_path / "renamed.nii.gz")
    info = [{"name": "liver", "idx": 1}, {"name": "tumour", "idx": 2}, {"name": "lesion malignant", "idx": 3}]
    _expect_4xx(lambda: client.save_label(image_id, str(path), "final", {"label_info": info}), 422, "tumour")


# -- fuzzed and hostile uploads (bounded) ------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), ext=st.sampled_from([".nii.gz", ".nii", ".nrrd"]))
def test_fuzzed_uploads_are_refused_cleanly(client, server, tmp_path, data, ext):
    before = _snapshot(server.studies.folder)
    path = tmp_path / f"fuzz{ext}"
    path.write_bytes(data)
    _expect_4xx(lambda: client.upload_image(str(path), "fuzz"))
    _expect_4xx(lambda: client.save_label(server.studies.labelled[0], str(path), "final"))
    assert _snapshot(server.studies.folder) == before


def test_absurd_header_is_refused_before_reading_voxels(client, tmp_path, unchanged_datastore):
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((4096, 4096, 4096))
    header.set_data_dtype(np.int16)
    path = tmp_path / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\1" * 1000)
    _expect_4xx(lambda: client.upload_image(str(path), "huge"), 413, "exceeds the limit")


def test_nan_voxels_zero_spacing_and_bad_ids(client, server, tmp_path, unchanged_datastore):
    nan = np.ones((8, 8, 8), np.float32)
    nan[2, 2, 2] = np.nan
    _expect_4xx(lambda: client.upload_image(str(_write(nan, None, tmp_path / "nan.nrrd")), "nan"), 422, "NaN")
    header = ("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nspace: left-posterior-superior\n"
              "space directions: (0,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nencoding: raw\nendian: little\n\n")
    zero = tmp_path / "zero.nrrd"
    zero.write_bytes(header.encode() + np.zeros(64, np.int16).tobytes())
    _expect_4xx(lambda: client.upload_image(str(zero), "zero"), 422)
    src = server.studies.folder / f"{server.studies.unlabelled[0]}.nii.gz"
    for bad in ("..", ".hidden", "a\\b", "x" * 200):
        _expect_4xx(lambda: client.upload_image(str(src), bad), 422)


def test_label_values_outside_the_contract(client, server, tmp_path, unchanged_datastore):
    image_id = server.studies.labelled[0]
    label, img = _read(server.studies.folder / "labels" / "final" / f"{image_id}.nii.gz")
    label = label.copy()
    label[0, 0, 0] = 9
    path = _write(label, img, tmp_path / "nine.nii.gz")
    _expect_4xx(lambda: client.save_label(image_id, str(path), "final"), 422, "outside the contract")
