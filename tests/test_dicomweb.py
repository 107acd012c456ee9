"""Serving a real Orthanc archive over DICOMweb, through the real server and ``MONAILabelClient``.

Orthanc comes from Debian's packages (``orthanc``, ``orthanc-dicomweb``); ``.ci/run`` installs
them and sets RADCASCADE_REQUIRE_ORTHANC=1, so in CI a missing Orthanc fails instead of skipping.

The archive holds the tiny generated studies as CT series (the labelled ones with a DICOM SEG),
an MR series and a CT series with a corrupt instance.  One loop runs what a user does: Next sample,
the cascade with its result stored as SEG + SR, Submit (a relabelled, reordered label), training
from the archive's labels; every SEG and SR is read back with highdicom and checked value by value.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
from pydicom.uid import generate_uid

from conftest import copy_weights, make_studies
from radcascade import localserver
from radcascade.dicom_seg import label_to_seg, seg_to_label
from radcascade.dicom_series import Patient, series_to_volume, volume_to_series
from radcascade.dicom_sr import read_lesion_report
from radcascade.dicomweb import DicomWebArchive
from radcascade.labels import LabelContract
from radcascade.orthanc import OrthancNotInstalled, OrthancServer, find_orthanc, upload_studies

CONTRACT = LabelContract()


def _orthanc_or_skip() -> None:
    try:
        find_orthanc()
    except OrthancNotInstalled as e:
        if os.environ.get("RADCASCADE_REQUIRE_ORTHANC") == "1":
            pytest.fail(f"Orthanc is required here (RADCASCADE_REQUIRE_ORTHANC=1): {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory):
    _orthanc_or_skip()
    root = tmp_path_factory.mktemp("dicomweb")
    orthanc = OrthancServer(root / "orthanc", localserver.free_port(), localserver.free_port()).start()
    server = None
    try:
        archive = DicomWebArchive(orthanc.dicomweb_url)
        studies = make_studies(root / "studies", labelled=3, unlabelled=2, seed=11)
        uids = upload_studies(archive, studies.folder, CONTRACT)
        # an MR series (never served) and a CT series with one corrupt instance (refused with its reason)
        image = sitk.ReadImage(str(next(studies.folder.glob("*.nii.gz"))))
        mr = volume_to_series(image, Patient("MR1", "Other^MR", generate_uid()), series_description="MR")
        for ds in mr:
            ds.Modality = "MR"
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        corrupt = volume_to_series(image, Patient("BAD1", "Corrupt^CT", generate_uid()), series_description="corrupt")
        corrupt[3].PixelData = corrupt[3].PixelData[:100]
        archive.store(mr + corrupt)
        model_dir = root / "model"
        model_dir.mkdir()
        copy_weights(model_dir)
        conf = {"model_dir": str(model_dir), "max_epochs": "1", "tracking_uri": "off",
                "dicomweb_cache": str(root / "cache"), "dicomweb_sync_s": "0"}
        server = localserver.start_server(orthanc.dicomweb_url, root / "server.log", conf)
        yield {"url": server.url, "archive": archive, "studies": studies, "ct": uids,
               "mr": mr[0].SeriesInstanceUID, "corrupt": corrupt[0].SeriesInstanceUID, "tmp": root}
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()


def _series(archive: DicomWebArchive, series_uid: str) -> list[pydicom.Dataset]:
    refs = [r for m in ("SEG", "SR", "CT") for r in archive.series(m) if r.series_uid == series_uid]
    assert refs, f"series {series_uid} is not in the archive"
    return archive.retrieve_series(refs[0])


def _ct_series(archive: DicomWebArchive, series_uid: str):
    return series_to_volume(_series(archive, series_uid))


def test_archive_is_served_with_its_labels_and_bad_series_refused(archive_server):
    client = MONAILabelClient(archive_server["url"])
    info = client.info()
    assert info["archive"]["studies"] == 5
    assert archive_server["corrupt"] in info["archive"]["refused"]
    assert "corrupt" in info["archive"]["refused"][archive_server["corrupt"]]
    listed = client.datastore()["objects"]
    assert set(listed) == set(archive_server["ct"])  # no MR, no corrupt series
    labelled = {k for k, v in listed.items() if "final" in v.get("labels", {})}
    assert len(labelled) == 3
    # the cached labels are the archive's SEGs mapped by name onto the contract, voxel for voxel
    for image_id in labelled:
        path = client.download_label(image_id, "final")
        cached = sitk.GetArrayFromImage(sitk.ReadImage(path))
        segs = [r for r in archive_server["archive"].series("SEG")]
        seg = next(s for r in segs for s in archive_server["archive"].retrieve_series(r)
                   if s.ReferencedSeriesSequence[0].SeriesInstanceUID == image_id)
        expected = seg_to_label(seg, _ct_series(archive_server["archive"], image_id), CONTRACT)
        np.testing.assert_array_equal(cached, expected)
    for bad, status in ((archive_server["mr"], 404), (archive_server["corrupt"], 422)):
        with pytest.raises(MONAILabelClientException) as e:
            client.infer("cascade", bad, {})
        assert f"Status: {status}" in str(e.value)
    # the archive owns its images: no upload, no removal through the app
    count = archive_server["archive"].instance_count()
    with pytest.raises(MONAILabelClientException) as e:
        client.upload_image(str(next(archive_server["studies"].folder.glob("*.nii.gz"))), "new_study")
    assert "Status: 405" in str(e.value)
    assert archive_server["archive"].instance_count() == count


def test_cascade_result_and_lesion_report_go_to_the_archive(archive_server):
    client = MONAILabelClient(archive_server["url"], tmpdir=str(archive_server["tmp"]))
    archive = archive_server["archive"]
    sample = client.next_sample("random", {})
    image_id = sample["id"]
    assert image_id in archive_server["ct"]
    before = archive.instance_count()
    path, answer = client.infer("cascade", image_id, {"store_in_archive": True})
    answer = json.loads(answer) if isinstance(answer, str) else answer
    copy = answer["archive"]
    assert archive.instance_count() == before + 2
    seg = _series(archive, copy["seg_series_uid"])[0]
    # segments named, coded and coloured as the contract says; AUTOMATIC (never a training label)
    colours = CONTRACT.colours()
    for item in seg.SegmentSequence:
        assert item.SegmentLabel in colours and int(item.SegmentNumber) == CONTRACT.value_of(item.SegmentLabel)
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert len(item.RecommendedDisplayCIELabValue) == 3
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    result = sitk.GetArrayFromImage(sitk.ReadImage(path))
    series = _ct_series(archive, image_id)
    np.testing.assert_array_equal(seg_to_label(seg, series, CONTRACT), result)
    sr = _series(archive, copy["sr_series_uid"])[0]
    reported = read_lesion_report(sr)
    assert len(reported) == answer["lesion_count"] == copy["lesions_reported"]
    for lesion, row in zip(answer["lesions"], reported):
        assert row.tracking_id == f"lesion {lesion['id']}"
        assert row.segment_number == lesion["value"]
        assert row.measurements["Volume"] == pytest.approx(lesion["volume_ml"])
        for axis, c in zip("XYZ", lesion["centroid_mm"]):
            assert row.measurements[f"Image Position (Patient) {axis}"] == pytest.approx(c)
        prob = (lesion.get("probabilities") or {}).get(lesion["class_name"])
        if prob is not None:
            assert row.measurements["Probability"] == pytest.approx(prob)
    # the findings are also downloadable as CSV for the study
    assert answer["report"].startswith("/report/")

    # MONAI Label's output=dicom_seg: any stage's answer as a SEG, its values mapped by name
    organ = requests.post(f"{archive_server['url']}/infer/organ", params={"image": image_id, "output": "dicom_seg"},
                          data={"params": "{}"}, timeout=120)
    assert organ.status_code == 200 and organ.headers["content-type"] == "application/dicom"
    organ_seg = pydicom.dcmread(io.BytesIO(organ.content))
    organ_label = seg_to_label(organ_seg, series, CONTRACT)
    assert set(np.unique(organ_label)) <= {0, CONTRACT.value_of(CONTRACT.organ)} and organ_label.any()
    assert archive.instance_count() == before + 2  # answered, not stored


def _write_label(values: np.ndarray, like: str, folder: Path) -> str:
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(sitk.ReadImage(like))
    path = tempfile.NamedTemporaryFile(suffix=".nii.gz", dir=folder, delete=False).name
    sitk.WriteImage(out, path)
    return path


def test_submit_stores_a_seg_and_training_reads_it_back(archive_server):
    client = MONAILabelClient(archive_server["url"], tmpdir=str(archive_server["tmp"]))
    archive = archive_server["archive"]
    listed = client.datastore()["objects"]
    image_id = next(k for k, v in listed.items() if "final" not in v.get("labels", {}))
    image_file = str(archive_server["tmp"] / "cache" / f"{image_id}.nii.gz")  # the server's mirror of the series
    # Slicer's label: segments in its own order (lesion malignant = 1, liver = 2, lesion benign = 3)
    shape = sitk.GetArrayFromImage(sitk.ReadImage(image_file)).shape
    drawn = np.zeros(shape, dtype=np.uint8)
    z, y, x = (s // 2 for s in shape)
    drawn[z - 3:z + 3, y - 12:y + 12, x - 12:x + 12] = 2
    drawn[z - 1:z + 1, y - 3:y + 3, x - 3:x + 3] = 1
    drawn[z - 1:z + 1, y + 6:y + 9, x + 6:x + 9] = 3
    label_info = [{"name": "lesion malignant", "idx": 1}, {"name": "liver", "idx": 2}, {"name": "lesion benign", "idx": 3}]
    expected = np.select([drawn == 2, drawn == 1, drawn == 3], [1, 3, 2], 0).astype(np.uint8)
    segs_before = {r.series_uid for r in archive.series("SEG")}

    # bad inputs first: nothing may reach the archive
    count = archive.instance_count()
    other = next(k for k in archive_server["ct"] if k != image_id)
    foreign = label_to_seg(np.zeros(_ct_series(archive, other).image.GetSize()[::-1], np.uint8),
                           _ct_series(archive, other), CONTRACT, automatic=False)
    foreign_path = archive_server["tmp"] / "foreign-seg.dcm"
    foreign.save_as(foreign_path)
    bad_geometry = sitk.GetImageFromArray(np.zeros((shape[0] - 1, shape[1], shape[2]), np.uint8))
    bad_geometry_path = str(archive_server["tmp"] / "bad-geometry.nii.gz")
    sitk.WriteImage(bad_geometry, bad_geometry_path)
    unknown = _write_label(drawn, image_file, archive_server["tmp"])
    for path, params, why in (
        (str(foreign_path), {}, "drawn on series"),
        (bad_geometry_path, {"label_info": label_info}, ""),
        (unknown, {"label_info": [{"name": "spleen", "idx": 2}, *label_info[::2]]}, "spleen"),
    ):
        with pytest.raises(MONAILabelClientException) as e:
            client.save_label(image_id, path, params=params)
        assert "Status: 4" in str(e.value) and why in str(e.value)
    assert archive.instance_count() == count

    # Submit: a SEG in the archive, in contract values, mapped by name
    path = _write_label(drawn, image_file, archive_server["tmp"])
    client.save_label(image_id, path, params={"label_info": label_info})
    assert archive.instance_count() == count + 1
    new = [r for r in archive.series("SEG") if r.series_uid not in segs_before]
    assert len(new) == 1
    seg = archive.retrieve_series(new[0])[0]
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"MANUAL"}
    np.testing.assert_array_equal(seg_to_label(seg, _ct_series(archive, image_id), CONTRACT), expected)
    cached = sitk.GetArrayFromImage(sitk.ReadImage(client.download_label(image_id, "final")))
    np.testing.assert_array_equal(cached, expected)

    # training (its own subprocess re-creates the app and mirrors the archive) uses the 4 SEG labels
    client.train_start("organ", {"max_epochs": 1, "val_split": 0.25})
    deadline = time.time() + 600
    status = {}
    while time.time() < deadline:
        status = client.train_status(False) or {}
        if status.get("status") not in ("SUBMITTED", "QUEUED", "RUNNING"):
            break
        time.sleep(1)
    assert status["status"] == "DONE", status.get("details", [])[-5:]
    assert any("on 4 labelled studies" in line for line in status.get("details", [])), status.get("details", [])[-20:]


def test_submit_while_the_archive_is_down_writes_nothing(tmp_path):
    """A label the archive did not accept is not cached either (HTTP 502), and the mirror keeps serving."""
    _orthanc_or_skip()
    from fastapi import HTTPException

    from radcascade.serving.archive import ArchiveDatastore

    orthanc = OrthancServer(tmp_path / "orthanc", localserver.free_port(), localserver.free_port()).start()
    try:
        studies = make_studies(tmp_path / "studies", labelled=0, unlabelled=1, seed=5)
        upload_studies(DicomWebArchive(orthanc.dicomweb_url), studies.folder, CONTRACT)
        store = ArchiveDatastore(orthanc.dicomweb_url, CONTRACT, cache_dir=tmp_path / "cache")
        (image_id,) = store.list_images()
    finally:
        orthanc.stop()
    image_file = store.get_image_uri(image_id)
    values = np.zeros(sitk.GetArrayFromImage(sitk.ReadImage(image_file)).shape, np.uint8)
    values[2:4, 10:20, 10:20] = 1
    path = _write_label(values, image_file, tmp_path)
    with pytest.raises(HTTPException) as e:
        store.save_label(image_id, path, "final", {})
    assert e.value.status_code == 502 and "not stored" in e.value.detail
    assert not store.get_label_uri(image_id, "final")
    assert not list((tmp_path / "cache" / "labels" / "final").glob("*"))
    store.sync()  # the archive is down: logged, the cached study is still served
    assert store.list_images() == [image_id]


def test_slicer_module_replayed_on_the_archive(archive_server, tmp_path):
    """3D Slicer's module (replayed, see slicer_replay.py) on an archive server: Next sample shows the
    cascade, Submit in the module's segment order lands in the archive as a SEG mapped by name."""
    from slicer_replay import SlicerModule

    archive = archive_server["archive"]
    module = SlicerModule(archive_server["url"], tmp_path, remote=True)  # Slicer on another machine
    module.fetch_info()
    assert module.info["models"]["cascade"]["config"]["store_in_archive"] is False  # a check box in Options
    sample = module.next_sample("random")
    assert sample["id"] in archive_server["ct"] and sample["shown_original"]
    assert module.node_name == sample["id"]
    module.run_model("cascade")
    drawn = {name: mask.copy() for name, mask in module.segments.items()}
    segs_before = {r.series_uid for r in archive.series("SEG")}
    module.submit(order=list(reversed(module.segments)))
    new = [r for r in archive.series("SEG") if r.series_uid not in segs_before]
    assert len(new) == 1
    stored = seg_to_label(archive.retrieve_series(new[0])[0], _ct_series(archive, sample["id"]), CONTRACT)
    for name, mask in drawn.items():
        np.testing.assert_array_equal(stored == CONTRACT.value_of(name), mask)
