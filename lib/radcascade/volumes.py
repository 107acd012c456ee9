"""Reading, validating and writing 3D volumes (NIfTI, NRRD, MHA, DICOM series folders).

Everything downstream works on a :class:`Volume`: a float32 array indexed ``(x, y, z)`` in a
canonical LPS orientation, with its spacing.  The original geometry is kept so that a label map
can be written back exactly onto the image the user sent.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radcascade.files import atomic_write_path
from radcascade.volume_headers import (  # noqa: F401 (InvalidVolumeError is re-exported)
    UNREADABLE,
    InvalidVolumeError,
    VolumeBudget,
    check_header,
    check_volume_file,
    read_raw_header,
)

CANONICAL_ORIENTATION = "LPS"
DEFAULT_MAX_VOXELS = 1024**3  # refuse anything larger before reading its voxels
GEOMETRY_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Geometry:
    """Where an image lies in space, as SimpleITK describes it (x, y, z order)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def matches(self, other: "Geometry", tol: float = GEOMETRY_TOLERANCE_MM) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=max(tol, 1e-3 * max(self.spacing)))
            and np.allclose(self.direction, other.direction, atol=1e-4)
        )


@dataclass
class Volume:
    """A 3D image in canonical orientation: ``array[x, y, z]`` (float32) and its spacing in mm."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    canonical: sitk.Image  # header-only reference for writing results (canonical orientation)
    original: Geometry  # geometry of the file as the user sent it

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    def index_to_physical(self, index) -> tuple[float, float, float]:
        """Physical (LPS, mm) coordinates of a continuous voxel index ``(x, y, z)``."""
        return tuple(self.canonical.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))


def _read_header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InvalidVolumeError(path.name, UNREADABLE) from None
    return reader



def read_image(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> sitk.Image:
    """Read a 3D image, validating the header before any voxel is loaded."""
    path = Path(path)
    if path.is_dir():
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
        if not names:
            raise InvalidVolumeError(path.name, "folder holds no DICOM series")
        series = sitk.ImageSeriesReader()
        series.SetFileNames(names)
        image = series.Execute()
        _check_geometry(path.name, image.GetDimension(), image.GetSize(), image.GetSpacing(), max_voxels)
        return _check_voxels(path.name, image)
    if not path.is_file():
        raise InvalidVolumeError(str(path), "no such file")
    raw = read_raw_header(path)
    if raw is not None:  # the header as written: ITK reads a spacing of 0 or NaN as 1 mm
        check_header(path.name, raw, max_voxels)
        if raw.dtype.kind == "f":  # ITK's NIfTI reader turns NaN voxels into 0: look before it does
            check_volume_file(path, VolumeBudget(max_voxels))
    reader = _read_header(path)
    size = reader.GetSize()
    dim = reader.GetDimension()
    if dim == 4 and size[3] == 1:
        dim, size = 3, size[:3]
    _check_geometry(path.name, dim, size, reader.GetSpacing()[:3], max_voxels)
    if reader.GetNumberOfComponents() != 1:
        raise InvalidVolumeError(path.name, f"{reader.GetNumberOfComponents()} components per voxel; expected a scalar image")
    _check_complete(path, reader)
    try:
        image = reader.Execute()
    except RuntimeError:
        raise InvalidVolumeError(path.name, "voxel data unreadable or truncated") from None
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    return _check_voxels(path.name, image)


def _voxel_bytes(reader: sitk.ImageFileReader) -> int:
    n = int(np.prod([int(v) for v in reader.GetSize()], dtype=np.int64))
    probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    return n * int(sitk.GetArrayViewFromImage(probe).itemsize) * reader.GetNumberOfComponents()


def _gzip_complete(stream: bytes) -> bool:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        for i in range(0, len(stream), 1 << 22):
            d.decompress(stream[i : i + (1 << 22)], 0)
            if d.eof:
                break
    except zlib.error:
        return False
    return d.eof


def _check_complete(path: Path, reader: sitk.ImageFileReader) -> None:
    """Refuse truncated files that ITK would silently read as partly empty.

    ``.nii.gz``: the gzip trailer holds the uncompressed size, which must be the voxel bytes plus
    a header of at most 64 KiB (O(1)); only when it is not does the whole stream get checked
    (multi-member gzip files). Other gzip files are decompressed once; raw files are size-checked.
    """
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() >= 18:
                f.seek(-4, os.SEEK_END)
                isize = int.from_bytes(f.read(4), "little")
                if 0 <= isize - (_voxel_bytes(reader) % (1 << 32)) <= 65536:
                    return
        ok = _gzip_complete(path.read_bytes())
    elif name.endswith(".gz"):
        ok = _gzip_complete(path.read_bytes())
    elif name.endswith(".nii"):
        ok = path.stat().st_size >= 348 + _voxel_bytes(reader)
    elif name.endswith(".nrrd"):
        data = path.read_bytes()
        ok = True
        if b"\n\n" in data[:65536]:
            header, payload = data.split(b"\n\n", 1)
            encoding = next((l.split(b":", 1)[1].strip().lower() for l in header.splitlines()
                             if l.lower().startswith(b"encoding:")), b"raw")
            if encoding in (b"gzip", b"gz"):
                ok = _gzip_complete(payload)
            elif encoding == b"raw" and b"data file:" not in header.lower():
                ok = len(payload) >= _voxel_bytes(reader)
    else:
        ok = True
    if not ok:
        raise InvalidVolumeError(path.name, "file is truncated or its compressed data is corrupt")


def _check_geometry(name, dim, size, spacing, max_voxels) -> None:
    if dim != 3:
        raise InvalidVolumeError(name, f"{dim}D image; a 3D volume is required")
    if min(size) < 2:
        raise InvalidVolumeError(name, f"size {tuple(size)} is degenerate; a 3D volume is required")
    n = int(np.prod([int(s) for s in size], dtype=np.int64))
    if n > max_voxels:
        raise InvalidVolumeError(name, f"{n} voxels {tuple(size)} exceeds the limit of {max_voxels}")
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InvalidVolumeError(name, f"spacing {tuple(spacing)} must be positive")


def _check_voxels(name: str, image: sitk.Image) -> sitk.Image:
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(image)
        if not np.isfinite(arr).all():
            raise InvalidVolumeError(name, "holds NaN or infinite voxel values")
    return image


def load_volume(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read and validate an image, reorient to LPS and return it as a float32 :class:`Volume`."""
    image = read_image(path, max_voxels)
    return volume_from_image(image)


def volume_from_image(image: sitk.Image) -> Volume:
    original = Geometry.of(image)
    canonical = sitk.DICOMOrient(image, CANONICAL_ORIENTATION)
    # [z, y, x] -> [x, y, z] as a strided view (order "K" keeps it one pass: a C-order copy of a
    # 512x512x200 CT costs ~1 s on 2 cores; torch reads the strides directly).
    array = sitk.GetArrayFromImage(canonical).transpose(2, 1, 0).astype(np.float32, order="K", copy=False)
    header = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    header.SetSpacing(canonical.GetSpacing())
    header.SetOrigin(canonical.GetOrigin())
    header.SetDirection(canonical.GetDirection())
    return Volume(array, tuple(canonical.GetSpacing()), header, original)


def read_geometry(path: str | os.PathLike) -> Geometry:
    """Geometry of an image file from its header alone (no voxels read)."""
    path = Path(path)
    if path.is_dir():
        return Geometry.of(read_image(path))
    reader = _read_header(path)
    dim = reader.GetDimension()
    if dim == 4 and reader.GetSize()[3] == 1:
        dim = 3
    if dim != 3:
        raise InvalidVolumeError(path.name, f"{dim}D image; a 3D volume is required")
    direction = reader.GetDirection()
    if len(direction) == 16:
        direction = tuple(direction[r * 4 + c] for r in range(3) for c in range(3))
    return Geometry(tuple(reader.GetSize()[:3]), tuple(reader.GetSpacing()[:3]), tuple(reader.GetOrigin()[:3]), tuple(direction))


def read_label(path: str | os.PathLike, expected: Geometry) -> sitk.Image:
    """Read a label map that must lie exactly on an image of geometry ``expected``.

    The size is compared from the header, before any voxel is read (a small file may claim 1000³).
    """
    path = Path(path)
    if path.is_file():
        dims = tuple(_read_header(path).GetSize())
        size = dims[:3] if len(dims) == 4 and dims[3] == 1 else dims
        if size != tuple(expected.size):
            raise InvalidVolumeError("label", f"size {size} differs from its image's size {expected.size}")
    label = read_image(path, max_voxels=max(8, int(np.prod(expected.size, dtype=np.int64))))
    geom = Geometry.of(label)
    if geom.size != expected.size:
        raise InvalidVolumeError("label", f"size {geom.size} differs from its image's size {expected.size}")
    if not geom.matches(expected):
        raise InvalidVolumeError("label", "geometry (spacing/origin/direction) differs from its image's")
    arr = sitk.GetArrayViewFromImage(label)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all() or not np.equal(np.mod(arr, 1), 0).all():
            raise InvalidVolumeError("label", "holds non-integer values")
    return label


def load_label_for(path: str | os.PathLike, image: Volume) -> np.ndarray:
    """Read a label map that must share ``image``'s geometry; return it canonical, ``[x, y, z]``."""
    label = read_label(path, image.original)
    canonical = sitk.DICOMOrient(label, CANONICAL_ORIENTATION)
    return np.ascontiguousarray(sitk.GetArrayFromImage(canonical).transpose(2, 1, 0)).astype(np.int32)


def label_image_like(label: np.ndarray, volume: Volume) -> sitk.Image:
    """Wrap a canonical ``[x, y, z]`` label array and put it back into the image's original orientation."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(label.astype(np.uint8, copy=False).transpose(2, 1, 0)))
    img.CopyInformation(_header_of_size(volume.canonical, label.shape))
    direction = np.array(volume.original.direction).reshape(3, 3)
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction.ravel().tolist())
    out = sitk.DICOMOrient(img, orientation)
    # DICOMOrient only permutes/flips axes; restore the exact original direction (oblique scans).
    out.SetDirection(volume.original.direction)
    out.SetOrigin(volume.original.origin)
    return out


def _header_of_size(header: sitk.Image, shape) -> sitk.Image:
    ref = sitk.Image([int(s) for s in shape], sitk.sitkUInt8)
    ref.SetSpacing(header.GetSpacing())
    ref.SetOrigin(header.GetOrigin())
    ref.SetDirection(header.GetDirection())
    return ref


def atomic_write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically (:mod:`radcascade.files`: the temporary keeps the
    extension ITK chooses its writer by, in a hidden ``.tmp`` folder no datastore scan matches)."""
    return atomic_write_path(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=compress))
