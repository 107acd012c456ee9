"""Hostile upload files for the reliability tests and the fuzzing benchmark.

Each is small on the wire and built to hurt a server that trusts it: decompression bombs (a
header claiming 1000³ voxels, gigabytes of zeros after a valid image), a tar slip archive, NaN
voxels, and spacings ITK would silently read as 1 mm. Bombs are written in a streaming way, so
making them costs no memory either.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ZEROS = bytes(1 << 22)


def _nifti1_header(shape: tuple[int, int, int], datatype: int, bitpix: int, spacing=(1.0, 1.0, 1.0)) -> bytes:
    """A minimal single-file NIfTI-1 header (348 bytes) plus the 4-byte extension flag."""
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, *shape, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, 1.0, *spacing, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", h, 108, 352.0)  # vox_offset
    struct.pack_into("<f", h, 112, 1.0)  # scl_slope
    struct.pack_into("<h", h, 252, 1)  # qform_code: scanner
    h[344:348] = b"n+1\0"
    return bytes(h) + b"\0\0\0\0"


def _gzip_stream(path: Path, head: bytes, zero_bytes: int) -> Path:
    """``head`` followed by ``zero_bytes`` zeros, gzip-compressed as one stream (written in pieces)."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(head)
        left = zero_bytes
        while left > 0:
            n = min(left, len(ZEROS))
            gz.write(ZEROS[:n])
            left -= n
    return path


def header_bomb(path: Path, side: int = 1000) -> Path:
    """A ``.nii.gz`` whose header claims ``side``³ uint8 voxels, all zeros (~1 MB for 1000³)."""
    return _gzip_stream(path, _nifti1_header((side, side, side), 2, 8), side**3)


def trailing_bomb(path: Path, image: Path, trailing_bytes: int = 1 << 30) -> Path:
    """A valid ``.nii.gz`` image (``image``) followed by ``trailing_bytes`` zeros in the same gzip stream."""
    with gzip.open(image, "rb") as f:
        valid = f.read()
    return _gzip_stream(path, valid, trailing_bytes)


def ratio_bomb(path: Path, shape=(600, 600, 600)) -> Path:
    """A valid-looking int16 image of constant zeros: inflates ~1000x (an image never compresses so well)."""
    return _gzip_stream(path, _nifti1_header(shape, 4, 16), int(np.prod(shape)) * 2)


def nan_nifti(path: Path, shape=(16, 16, 8)) -> Path:
    """A float32 NIfTI with one NaN voxel (ITK reads it as 0)."""
    data = np.ones(shape[::-1], np.float32)
    data[1, 1, 1] = np.nan
    return _gzip_stream(path, _nifti1_header(shape, 16, 32) + data.tobytes(), 0)


def spacing_nifti(path: Path, spacing: tuple[float, float, float], shape=(16, 16, 8)) -> Path:
    """An int16 NIfTI with the given (e.g. zero or NaN) spacing (ITK reads 0 and NaN as 1 mm)."""
    return _gzip_stream(path, _nifti1_header(shape, 4, 16, spacing) + bytes(2 * int(np.prod(shape))), 0)


def valid_image(path: Path, shape=(512, 512, 160), seed: int = 0) -> Path:
    """A plausible CT-like int16 volume (air, a body, a noisy organ): 80 MB of voxels in ~3.5 MB of
    gzip (22x, within the default inflation limit). The control upload: large enough that its
    inflation shows in the server's peak memory (a buffer that size is freshly mapped)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape[::-1]), indexing="ij")
    data = np.where(x**2 + y**2 < 0.6, 40, -1000).astype("<i2")
    organ = (x - 0.2) ** 2 + (y + 0.1) ** 2 + (z * 0.5) ** 2 < 0.2
    data[organ] += (60 + rng.normal(0, 4, int(organ.sum()))).astype("<i2")
    return _gzip_stream(path, _nifti1_header(shape, 4, 16, (0.8, 0.8, 2.0)) + data.tobytes(), 0)


def tar_slip(path: Path, targets: list[str]) -> Path:
    """A tar archive whose members are named ``targets`` (e.g. ``../x``, ``/abs/x``), dated 1970."""
    with tarfile.open(path, "w") as tar:
        for name in targets:
            data = b"written outside the sessions folder\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


def inflated_size(path: Path) -> int:
    """Bytes a gzip file inflates to (streamed; for reporting the bombs' sizes)."""
    d, total = zlib.decompressobj(16 + zlib.MAX_WBITS), 0
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            while piece:
                total += len(d.decompress(piece, 1 << 24))
                piece = d.unconsumed_tail
    return total


@dataclass(frozen=True)
class HostileUpload:
    """One upload request carrying a hostile file: what the server must refuse with a 4xx."""

    name: str
    method: str
    path: str  # with its query
    field: str  # multipart field of the file
    file: Path


def bomb_uploads(folder: Path, like_image: Path, image_id: str) -> list[HostileUpload]:
    """The decompression bombs of issue 13 (each ~1 MB on the wire) against every upload route."""
    header = header_bomb(folder / "header-bomb.nii.gz")
    trailing = trailing_bomb(folder / "trailing-bomb.nii.gz", like_image)
    ratio = ratio_bomb(folder / "ratio-bomb.nii.gz")
    label = f"/datastore/label?image={image_id}&tag=final"
    return [
        HostileUpload("label, 1000^3 header", "PUT", label, "label", header),
        HostileUpload("label, 1 GiB trailing zeros", "PUT", label, "label", trailing),
        HostileUpload("image, 1000^3 header", "PUT", "/datastore/image?image=bomb", "file", header),
        HostileUpload("image, 1 GiB trailing zeros", "PUT", "/datastore/image?image=bomb", "file", trailing),
        HostileUpload("image, 1000x constant", "PUT", "/datastore/image?image=bomb", "file", ratio),
        HostileUpload("infer file, 1 GiB trailing zeros", "POST", "/infer/cascade", "file", trailing),
        HostileUpload("infer label, 1000^3 header", "POST", f"/infer/lesion?image={image_id}", "label", header),
        HostileUpload("session, 1000^3 header", "PUT", "/session/", "files", header),
        HostileUpload("session, 1 GiB trailing zeros", "PUT", "/session/", "files", trailing),
    ]
