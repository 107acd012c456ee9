"""The per-lesion findings as a DICOM Structured Report (TID 1500 measurement report, highdicom).

One measurement group per lesion, tracked as ``lesion <id>``, referencing the SEG segment of its
class, with:

* finding type: the class's neoplasm code (as in the SEG), finding site: the organ;
* measurements: volume (mL), class probability, segmentation probability (mean over the lesion),
  the centroid in patient coordinates (x, y, z in mm, derived as a centre of mass), and the
  classifier's uncertainty (entropy, disagreement between views) under radcascade's private coding
  scheme ``99RADCASCADE`` (DICOM has no standard code for them).

This is what a radiologist opens in a PACS viewer; the same findings are kept as JSON/CSV for local
studies (:mod:`radcascade.serving.reports`).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from radcascade import __version__
from radcascade.dicom_seg import MANUFACTURER, label_code
from radcascade.labels import LabelContract

SR_DESCRIPTION = "radcascade lesion report"
PRIVATE_SCHEME = "99RADCASCADE"
_C = hd.sr.CodedConcept
VOLUME = _C("118565006", "SCT", "Volume")
PROBABILITY = _C("122157", "DCM", "Probability")
SEGMENTATION_PROBABILITY = _C("SEGPROB", PRIVATE_SCHEME, "Mean segmentation probability")
ENTROPY = _C("ENTROPY", PRIVATE_SCHEME, "Classifier entropy")
VIEW_DISAGREEMENT = _C("VIEWDIS", PRIVATE_SCHEME, "Classifier disagreement between views")
CENTRE_OF_MASS = _C("128138", "DCM", "Center of Mass")
POSITION = (_C("110904", "DCM", "Image Position (Patient) X"), _C("110905", "DCM", "Image Position (Patient) Y"),
            _C("110906", "DCM", "Image Position (Patient) Z"))
MILLILITRE = _C("ml", "UCUM", "milliliter")
MILLIMETRE = _C("mm", "UCUM", "millimeter")
NO_UNITS = _C("1", "UCUM", "no units")
ALGORITHM = hd.sr.AlgorithmIdentification(name="radcascade", version=__version__)


@dataclass(frozen=True)
class LesionRow:
    """What the report says about one lesion (read from an infer answer's ``lesions`` entry)."""

    id: int
    value: int
    class_name: str
    volume_ml: float
    centroid_mm: tuple[float, float, float]
    class_probability: float | None
    segmentation_probability: float | None
    entropy: float | None
    view_disagreement: float | None

    @classmethod
    def from_json(cls, lesion: dict) -> "LesionRow":
        name = str(lesion["class_name"])
        probs = lesion.get("probabilities") or {}
        unc = lesion.get("uncertainty") or {}
        opt = lambda v: None if v is None else float(v)  # noqa: E731
        return cls(int(lesion["id"]), int(lesion["value"]), name, float(lesion["volume_ml"]),
                   tuple(float(c) for c in lesion["centroid_mm"]), opt(probs.get(name)),
                   opt(lesion.get("mean_probability")), opt(unc.get("entropy")), opt(unc.get("view_disagreement")))


def _measurement(name, value: float, unit, derivation=None) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation, algorithm_id=ALGORITHM)


def lesion_group(row: LesionRow, seg: pydicom.Dataset, contract: LabelContract) -> \
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The TID 1411 group of one lesion, referencing its class's segment in ``seg``."""
    code = label_code(contract, row.value)
    organ = label_code(contract, contract.value_of(contract.organ)).type
    measurements = [_measurement(VOLUME, row.volume_ml, MILLILITRE)]
    if row.class_probability is not None:
        measurements.append(_measurement(PROBABILITY, row.class_probability, NO_UNITS))
    if row.segmentation_probability is not None:
        measurements.append(_measurement(SEGMENTATION_PROBABILITY, row.segmentation_probability, NO_UNITS))
    measurements += [_measurement(axis, c, MILLIMETRE, CENTRE_OF_MASS) for axis, c in zip(POSITION, row.centroid_mm)]
    if row.entropy is not None:
        measurements.append(_measurement(ENTROPY, row.entropy, NO_UNITS))
    if row.view_disagreement is not None:
        measurements.append(_measurement(VIEW_DISAGREEMENT, row.view_disagreement, NO_UNITS))
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=row.value,
        source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"lesion {row.id}"),
        referenced_segment=segment, finding_type=code.type, finding_category=code.category,
        finding_sites=[hd.sr.FindingSite(anatomic_location=organ)], algorithm_id=ALGORITHM,
        measurements=measurements)


def lesion_report(lesions: Sequence[dict], seg: pydicom.Dataset, contract: LabelContract,
                  series_number: int = 301) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report with one group per lesion of an infer answer, referencing ``seg``."""
    rows = [LesionRow.from_json(lesion) for lesion in lesions]
    context = hd.sr.ObservationContext(
        observer_person_context=None,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(), name="radcascade", manufacturer_name=MANUFACTURER)))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=_C("77477000", "SCT", "Computed Tomography"),
        imaging_measurements=[lesion_group(row, seg, contract) for row in rows])
    now = _dt.datetime.now()
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg], content=report, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False)
    sr.SeriesDescription = SR_DESCRIPTION
    sr.SeriesDate = sr.ContentDate = now.strftime("%Y%m%d")
    sr.SeriesTime = sr.ContentTime = now.strftime("%H%M%S.%f")
    return sr


@dataclass(frozen=True)
class ReportedLesion:
    """One lesion as read back from an SR (for checks and for tools that consume the report)."""

    tracking_id: str
    finding_type: str
    segment_number: int
    measurements: dict[str, float]


def read_lesion_report(sr: pydicom.Dataset) -> list[ReportedLesion]:
    """The lesions of an SR written by :func:`lesion_report` (as read from a file or the archive),
    with their measurements by meaning."""
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True)
    groups = parsed.content.get_volumetric_roi_measurement_groups()
    out = []
    for group in groups:
        measurements = {m.name.meaning: float(m.value) for m in group.get_measurements()}
        segment = int(group.referenced_segment.referenced_segment_numbers[0])
        out.append(ReportedLesion(str(group.tracking_identifier), str(group.finding_type.meaning), segment, measurements))
    return out
