"""DICOM objects without an archive: CT series checks, SEG written and read back by name, the SR."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from radcascade.dicom_seg import DicomSegError, is_training_label, label_to_seg, seg_to_label
from radcascade.dicom_series import DicomSeriesError, Patient, series_to_volume, volume_to_series
from radcascade.dicom_sr import lesion_report, read_lesion_report
from radcascade.labels import LabelContract

CONTRACT = LabelContract()


def _roundtrip(ds) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, write_like_original=False)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


@pytest.fixture
def ct():
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1500, size=(6, 20, 24)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-10.0, 5.0, 30.0))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))  # not axis-aligned with the array
    return image, volume_to_series(image, Patient("P1", "Test^One", generate_uid()))


def test_series_reads_back_to_the_same_volume_in_any_instance_order(ct):
    image, instances = ct
    shuffled = [_roundtrip(ds) for ds in instances[::-1]]
    volume = series_to_volume(shuffled)
    resampled = sitk.Resample(volume.image, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(image))
    assert volume.image.GetSpacing() == pytest.approx((0.8, 0.7, 2.5))
    assert len(volume.instance_uids) == 6 and volume.headers[0].get("PixelData") is None


@pytest.mark.parametrize("damage, message", [
    (lambda s: [setattr(ds, "Modality", "MR") for ds in s], "CT series only"),
    (lambda s: setattr(s[2], "ImagePositionPatient", s[1].ImagePositionPatient), "same position"),
    (lambda s: setattr(s[5], "ImagePositionPatient", [s[5].ImagePositionPatient[0], s[5].ImagePositionPatient[1],
                                                      float(s[5].ImagePositionPatient[2]) - 9]), "uneven"),
    (lambda s: setattr(s[3], "PixelSpacing", [1.5, 1.5]), "pixel spacings"),
    (lambda s: setattr(s[4], "PixelData", s[4].PixelData[:50]), "unreadable pixel data"),
    (lambda s: setattr(s[1], "SeriesInstanceUID", generate_uid()), "another series"),
])
def test_series_that_is_not_one_ct_volume_is_refused_with_the_reason(ct, damage, message):
    _, instances = ct
    instances = [_roundtrip(ds) for ds in instances]
    damage(instances)
    with pytest.raises(DicomSeriesError, match=message):
        series_to_volume(instances)


def test_seg_from_another_tool_is_mapped_by_segment_name(ct):
    _, instances = ct
    series = series_to_volume(instances)
    other_order = LabelContract(organ="liver", lesion_classes=("lesion malignant", "lesion benign"))
    drawn = np.zeros((6, 20, 24), dtype=np.uint8)
    drawn[1:5, 4:16, 4:18] = 1
    drawn[2:4, 6:9, 6:9] = 2  # malignant in the other tool's numbering
    drawn[2:4, 10:13, 12:15] = 3  # benign
    seg = _roundtrip(label_to_seg(drawn, series, other_order, automatic=False))
    assert is_training_label(seg)
    back = seg_to_label(seg, series, CONTRACT)
    expected = np.select([drawn == 1, drawn == 2, drawn == 3], [1, 3, 2], 0)
    np.testing.assert_array_equal(back, expected)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "lesion malignant", "lesion benign"]

    unknown = _roundtrip(label_to_seg(drawn, series, LabelContract(organ="spleen"), automatic=False))
    with pytest.raises(DicomSegError, match="spleen"):
        seg_to_label(unknown, series, CONTRACT)
    other = series_to_volume(volume_to_series(series.image, Patient("P2", "Test^Two", generate_uid())))
    with pytest.raises(DicomSegError, match="drawn on series"):
        seg_to_label(seg, other, CONTRACT)
    automatic = _roundtrip(label_to_seg(drawn, series, CONTRACT, automatic=True))
    assert not is_training_label(automatic)
    with pytest.raises(DicomSegError, match="outside the label contract"):
        label_to_seg(drawn + 5, series, CONTRACT, automatic=False)


def test_sr_lists_every_lesion_with_its_measurements(ct):
    _, instances = ct
    series = series_to_volume(instances)
    label = np.zeros((6, 20, 24), dtype=np.uint8)
    label[2:4, 6:9, 6:9] = 2
    seg = _roundtrip(label_to_seg(label, series, CONTRACT, automatic=True))
    lesions = [
        {"id": 1, "value": 2, "class_name": "lesion benign", "volume_ml": 0.25, "centroid_mm": [1.5, -2.0, 30.25],
         "probabilities": {"lesion benign": 0.91, "lesion malignant": 0.09}, "mean_probability": 0.8,
         "uncertainty": {"entropy": 0.44, "view_disagreement": 0.03}},
        {"id": 2, "value": 3, "class_name": "lesion malignant", "volume_ml": 4.0, "centroid_mm": [0, 0, 0],
         "probabilities": {}, "mean_probability": 0.6, "uncertainty": {}},
    ]
    rows = read_lesion_report(_roundtrip(lesion_report(lesions, seg, CONTRACT)))
    assert [r.tracking_id for r in rows] == ["lesion 1", "lesion 2"]
    assert [r.segment_number for r in rows] == [2, 3]
    assert [r.finding_type for r in rows] == ["Neoplasm, benign", "Malignant neoplastic disease"]
    first = rows[0].measurements
    assert first["Volume"] == 0.25 and first["Probability"] == 0.91
    assert (first["Image Position (Patient) X"], first["Image Position (Patient) Z"]) == (1.5, 30.25)
    assert first["Classifier entropy"] == 0.44 and first["Mean segmentation probability"] == 0.8
    assert "Probability" not in rows[1].measurements  # no trained classifier: no probability invented
