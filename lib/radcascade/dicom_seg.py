"""Label maps as DICOM Segmentation objects (written and read with highdicom).

A SEG written here references its CT series instance by instance, has one segment per contract
label (segment number = contract value) named as the contract names it, with a coded property
category and type (SNOMED CT: the organ as an anatomical structure, the lesion classes as
neoplasms) and the label's display colour.  Submitted labels are ``MANUAL`` segments; the
cascade's own results are ``AUTOMATIC`` and are never read back as training labels.

Reading maps segments **by name** onto contract values, so a SEG made by another tool, with its
segments in any order, trains the models as long as its segment names are the contract's.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from radcascade import __version__
from radcascade.dicom_series import SeriesVolume
from radcascade.labels import LabelContract

SEG_MODALITY = "SEG"
MANUFACTURER = "radcascade"
#: the algorithm that makes AUTOMATIC segments
ALGORITHM = hd.AlgorithmIdentificationSequence(
    name="radcascade cascade", family=codes.DCM.ArtificialIntelligence, version=__version__)
SUBMITTED_DESCRIPTION = "radcascade label"
RESULT_DESCRIPTION = "radcascade cascade result"

_SCT = hd.sr.CodedConcept
ANATOMICAL_STRUCTURE = _SCT("123037004", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = _SCT("49755003", "SCT", "Morphologically Abnormal Structure")
ORGAN = _SCT("272625005", "SCT", "Organ")
NEOPLASM = _SCT("108369006", "SCT", "Neoplasm")
_ORGAN_CODES = {
    "liver": _SCT("10200004", "SCT", "Liver"), "spleen": _SCT("78961009", "SCT", "Spleen"),
    "pancreas": _SCT("15776009", "SCT", "Pancreas"), "kidney": _SCT("64033007", "SCT", "Kidney"),
}
BENIGN_NEOPLASM = _SCT("3898006", "SCT", "Neoplasm, benign")
MALIGNANT_NEOPLASM = _SCT("363346000", "SCT", "Malignant neoplastic disease")
TRAINING_ALGORITHM_TYPES = ("MANUAL", "SEMIAUTOMATIC")


class DicomSegError(ValueError):
    """A SEG that cannot be a label of this series under this contract."""


@dataclass(frozen=True)
class LabelCode:
    """How one contract label is coded in a SEG."""

    category: hd.sr.CodedConcept
    type: hd.sr.CodedConcept


def label_code(contract: LabelContract, value: int) -> LabelCode:
    """SNOMED CT category and type of a contract value (organ: anatomical structure; lesion classes:
    neoplasms, benign / malignant when the class name says so)."""
    name = contract.name_of(value)
    if value == contract.value_of(contract.organ):
        return LabelCode(ANATOMICAL_STRUCTURE, _ORGAN_CODES.get(name.lower(), ORGAN))
    lowered = name.lower()
    if "malignant" in lowered:
        kind = MALIGNANT_NEOPLASM
    elif "benign" in lowered:
        kind = BENIGN_NEOPLASM
    else:
        kind = NEOPLASM
    return LabelCode(MORPHOLOGICALLY_ABNORMAL_STRUCTURE, kind)


def cielab(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """DICOM's recommended display colour (CIELab scaled to 0..65535, D65) of an sRGB colour."""
    c = np.array(rgb, dtype=float) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    return (int(round(lab[0] * 65535 / 100)), int(round((lab[1] + 128) * 65535 / 255)),
            int(round((lab[2] + 128) * 65535 / 255)))


def segment_descriptions(contract: LabelContract, automatic: bool) -> list[hd.seg.SegmentDescription]:
    """One description per contract label, numbered by contract value."""
    out = []
    colours = contract.colours()
    for name, value in contract.names_to_values().items():
        code = label_code(contract, value)
        desc = hd.seg.SegmentDescription(
            segment_number=value, segment_label=name, segmented_property_category=code.category,
            segmented_property_type=code.type, algorithm_type="AUTOMATIC" if automatic else "MANUAL",
            algorithm_identification=ALGORITHM if automatic else None,
            tracking_uid=generate_uid(), tracking_id=name)
        rgb = colours.get(name)
        if rgb is not None:
            desc.RecommendedDisplayCIELabValue = list(cielab(tuple(rgb)))
        out.append(desc)
    return out


def label_to_seg(label_zyx: np.ndarray, series: SeriesVolume, contract: LabelContract, automatic: bool,
                 series_number: int = 300) -> hd.seg.Segmentation:
    """A SEG of a contract-valued label map on ``series`` (``[z, y, x]``, slice z = the z-th instance)."""
    if label_zyx.shape != (len(series.headers), int(series.headers[0].Rows), int(series.headers[0].Columns)):
        raise DicomSegError(f"label of shape {label_zyx.shape} does not lie on series {series.series_uid}")
    values = contract.names_to_values()
    known = np.zeros(256, dtype=bool)
    known[[0, *values.values()]] = True
    if int(label_zyx.max(initial=0)) > 255 or not known[label_zyx.astype(np.int64)].all():
        raise DicomSegError("the label holds values outside the label contract")
    now = _dt.datetime.now()
    seg = hd.seg.Segmentation(
        source_images=list(series.headers),
        pixel_array=label_zyx.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(contract, automatic),
        series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name="radcascade", software_versions=__version__,
        device_serial_number="0", content_label="RESULT" if automatic else "LABEL",
        content_description=RESULT_DESCRIPTION if automatic else SUBMITTED_DESCRIPTION,
        content_creator_name=None if automatic else "radcascade^submitted",
    )
    seg.SeriesDescription = RESULT_DESCRIPTION if automatic else SUBMITTED_DESCRIPTION
    seg.SeriesDate = seg.ContentDate = now.strftime("%Y%m%d")
    seg.SeriesTime = seg.ContentTime = now.strftime("%H%M%S.%f")
    return seg


def referenced_series(seg: pydicom.Dataset) -> str | None:
    """The series a SEG was drawn on (its ReferencedSeriesSequence)."""
    refs = getattr(seg, "ReferencedSeriesSequence", None)
    return str(refs[0].SeriesInstanceUID) if refs else None


def is_training_label(seg: pydicom.Dataset) -> bool:
    """A SEG whose segments were drawn or corrected by a person (not the cascade's own result)."""
    segments = getattr(seg, "SegmentSequence", None) or []
    return bool(segments) and all(str(s.SegmentAlgorithmType) in TRAINING_ALGORITHM_TYPES for s in segments)


def seg_to_label(seg_dataset: pydicom.Dataset, series: SeriesVolume, contract: LabelContract) -> np.ndarray:
    """A SEG's segments as a contract-valued ``[z, y, x]`` label map on ``series``, mapped by name."""
    if str(getattr(seg_dataset, "Modality", "")) != SEG_MODALITY:
        raise DicomSegError("not a DICOM SEG")
    ref = referenced_series(seg_dataset)
    if ref != series.series_uid:
        raise DicomSegError(f"the SEG was drawn on series {ref}, not on {series.series_uid}")
    try:
        seg = hd.seg.Segmentation.from_dataset(seg_dataset, copy=True)
    except Exception as e:  # noqa: BLE001 - highdicom raises several types on malformed SEGs
        raise DicomSegError(f"unreadable SEG: {e}") from e
    numbers = list(seg.segment_numbers)
    lut = np.zeros(max(numbers, default=0) + 1, dtype=np.uint8)
    for number in numbers:
        name = seg.get_segment_description(number).segment_label
        try:
            lut[number] = contract.value_of(name)
        except Exception as e:  # noqa: BLE001 - an unknown name
            raise DicomSegError(f"SEG segment {number} '{name}' is not one of {list(contract.names_to_values())}") from e
    referenced = {str(r.ReferencedSOPInstanceUID) for item in seg_dataset.ReferencedSeriesSequence
                  for r in item.ReferencedInstanceSequence}
    if not referenced <= set(series.instance_uids):
        raise DicomSegError(f"the SEG references instances that are not in series {series.series_uid}")
    try:
        masks = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(series.instance_uids), segment_numbers=numbers,
            combine_segments=False, skip_overlap_checks=True, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001
        raise DicomSegError(f"the SEG's frames do not map onto series {series.series_uid}: {e}") from e
    out = np.zeros(masks.shape[:3], dtype=np.uint8)
    for i, number in enumerate(numbers):  # later segments win where two overlap
        out[masks[..., i] > 0] = lut[number]
    return out

