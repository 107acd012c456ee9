"""CT series as DICOM instances: read one into a volume (with the checks a PACS series needs), and
write a volume as one (for putting sample data into an archive).

A series read here becomes a SimpleITK image whose voxel ``[z, y, x]`` is pixel ``(y, x)`` of the
``z``-th instance sorted along the slice normal; :class:`SeriesVolume` keeps that order (the SOP
Instance UIDs) so that a label map on the volume can be written back as a DICOM SEG referencing
the right instance for each slice.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

CT_MODALITY = "CT"
#: relative tolerance on slice spacing and in-plane geometry between instances of one series
GEOMETRY_TOLERANCE = 1e-3
MIN_SLICES = 2


class DicomSeriesError(ValueError):
    """A series that cannot be read as one CT volume (wrong modality, mixed geometry, corrupt)."""


@dataclass(frozen=True)
class SeriesVolume:
    """A CT series as a volume, with the instance order of its slices."""

    image: sitk.Image | None  # Hounsfield units, float32, geometry of the series (LPS); None: headers only
    study_uid: str
    series_uid: str
    instance_uids: tuple[str, ...]  # SOP Instance UID of slice z (0..n-1)
    headers: tuple[pydicom.Dataset, ...]  # the instances without pixel data, in slice order


def _float_list(ds: pydicom.Dataset, keyword: str, n: int) -> list[float]:
    value = getattr(ds, keyword, None)
    if value is None or len(value) != n:
        raise DicomSeriesError(f"instance {getattr(ds, 'SOPInstanceUID', '?')} has no valid {keyword}")
    return [float(v) for v in value]


def header_only(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of an instance without its pixel data (what a SEG or SR needs to reference it)."""
    out = pydicom.Dataset()
    for element in ds:
        if element.tag != 0x7FE00010:
            out.add(element)
    out.file_meta = getattr(ds, "file_meta", FileMetaDataset())
    return out


def series_to_volume(instances: Sequence[pydicom.Dataset], max_voxels: int | None = None) -> SeriesVolume:
    """One CT volume from a series' instances, or :class:`DicomSeriesError` saying what is wrong."""
    if len(instances) < MIN_SLICES:
        raise DicomSeriesError(f"a series needs at least {MIN_SLICES} slices, got {len(instances)}")
    first = instances[0]
    modality = str(getattr(first, "Modality", "") or "")
    if modality != CT_MODALITY:
        raise DicomSeriesError(f"series {getattr(first, 'SeriesInstanceUID', '?')} is {modality or 'of no modality'}; "
                               f"radcascade reads CT series only")
    series_uid = str(first.SeriesInstanceUID)
    rows, cols = int(first.Rows), int(first.Columns)
    if max_voxels is not None and rows * cols * len(instances) > max_voxels:
        raise DicomSeriesError(f"series {series_uid} has {rows * cols * len(instances)} voxels (limit {max_voxels})")
    orientation = np.array(_float_list(first, "ImageOrientationPatient", 6))
    spacing_yx = _float_list(first, "PixelSpacing", 2)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DicomSeriesError(f"series {series_uid}: ImageOrientationPatient is not two orthonormal directions")
    for ds in instances:
        if str(getattr(ds, "SeriesInstanceUID", "")) != series_uid:
            raise DicomSeriesError(f"instance {getattr(ds, 'SOPInstanceUID', '?')} belongs to another series")
        if str(getattr(ds, "Modality", "")) != CT_MODALITY:
            raise DicomSeriesError(f"series {series_uid} mixes modalities")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DicomSeriesError(f"series {series_uid} mixes image sizes")
        if not np.allclose(_float_list(ds, "ImageOrientationPatient", 6), orientation, atol=GEOMETRY_TOLERANCE):
            raise DicomSeriesError(f"series {series_uid} mixes slice orientations")
        if not np.allclose(_float_list(ds, "PixelSpacing", 2), spacing_yx, rtol=GEOMETRY_TOLERANCE):
            raise DicomSeriesError(f"series {series_uid} mixes pixel spacings")
    positions = np.array([_float_list(ds, "ImagePositionPatient", 3) for ds in instances])
    along = positions @ normal
    order = np.argsort(along)
    steps = np.diff(along[order])
    if np.any(steps < 1e-4):
        raise DicomSeriesError(f"series {series_uid} has two slices at the same position")
    if not np.allclose(steps, steps.mean(), rtol=0.01, atol=0.01):
        raise DicomSeriesError(f"series {series_uid} has uneven slice spacing ({steps.min():.3g}..{steps.max():.3g} mm)")
    slices = []
    for i in order:
        ds = instances[i]
        try:
            pixels = ds.pixel_array
        except Exception as e:  # noqa: BLE001 - pydicom raises many types on a corrupt instance
            raise DicomSeriesError(f"instance {getattr(ds, 'SOPInstanceUID', '?')} of series {series_uid} "
                                   f"has unreadable pixel data: {e}") from e
        if pixels.shape != (rows, cols):
            raise DicomSeriesError(f"instance {ds.SOPInstanceUID} has {pixels.shape} pixels, not {(rows, cols)}")
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append(pixels.astype(np.float32) * slope + intercept)
    image = sitk.GetImageFromArray(np.stack(slices))
    image.SetSpacing((spacing_yx[1], spacing_yx[0], float(steps.mean())))
    image.SetOrigin(tuple(float(v) for v in positions[order[0]]))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row_dir, col_dir, normal]).ravel()))
    return SeriesVolume(image, str(first.StudyInstanceUID), series_uid,
                        tuple(str(instances[i].SOPInstanceUID) for i in order),
                        tuple(header_only(instances[i]) for i in order))


@dataclass(frozen=True)
class Patient:
    """Who and what a generated series is about (sample data: made-up identities)."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_id: str = "1"
    study_description: str = "radcascade sample"
    accession_number: str = ""


def volume_to_series(image: sitk.Image, patient: Patient, series_uid: str | None = None,
                     series_description: str = "CT", series_number: int = 1) -> list[pydicom.Dataset]:
    """A volume (HU) as a CT series of single-frame instances (16-bit, rescale intercept -1024)."""
    array = sitk.GetArrayFromImage(image)  # [z, y, x]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    series_uid = series_uid or generate_uid()
    frame_of_reference = generate_uid()
    now = _dt.datetime.now()
    stored = np.clip(np.rint(array) + 1024, 0, 65535).astype(np.uint16)
    out = []
    for z in range(array.shape[0]):
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName = patient.patient_id, patient.patient_name
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.StudyID = patient.study_uid, patient.study_id
        ds.StudyDescription, ds.AccessionNumber = patient.study_description, patient.accession_number
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.Manufacturer = CT_MODALITY, "radcascade sample data"
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
        ds.SeriesDescription = series_description
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.InstanceNumber = z + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.KVP = "120"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = stored[z].tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.preamble = b"\x00" * 128  # a Part 10 file when written
        out.append(ds)
    return out


def instances_of(datasets: Iterable[pydicom.Dataset], modality: str) -> list[pydicom.Dataset]:
    """The instances of one modality among ``datasets``."""
    return [ds for ds in datasets if str(getattr(ds, "Modality", "")) == modality]
