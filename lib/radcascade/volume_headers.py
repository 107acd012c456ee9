"""Raw NIfTI / NRRD headers, and checking a file's voxel data while streaming it.

ITK reads what a header says and forgives what it should not: a NIfTI spacing of 0 or NaN comes
back as 1 mm, a detached NRRD reads any file the header names, and a gzip stream is inflated
whole before anyone compares its size with the header. Everything here reads a bounded amount:

* :func:`read_raw_header` parses the header as written (at most 1 MiB of it, inflated or not);
* :func:`check_volume_file` then streams the voxel data once, in 1 MiB pieces, and refuses a file
  whose data is shorter or longer than its header says, that inflates more than its budget, or
  whose floating-point voxels hold NaN/inf, before any of it is inflated in memory.
"""

from __future__ import annotations

import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

CHUNK = 1 << 20
MAX_HEADER_BYTES = 1 << 20
TRAILING_SLACK = 1 << 16  # bytes tolerated after the voxel data (padding some writers add)
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
UNREADABLE = "not a readable medical image (NIfTI, NRRD, MHA or DICOM)"


class InvalidVolumeError(ValueError):
    """A file is not a usable 3D volume (unreadable, wrong dimensionality, bad geometry).

    ``reason`` is the problem alone, so a caller can name the file the way its user knows it
    (an image id rather than a temporary upload path). ``too_large`` marks a file refused for its
    size (HTTP 413) rather than its content (422).
    """

    def __init__(self, name: str, reason: str, too_large: bool = False):
        super().__init__(f"{name}: {reason}" if name else reason)
        self.name = name
        self.reason = reason
        self.too_large = too_large


@dataclass(frozen=True)
class RawHeader:
    """What a NIfTI or NRRD header says, before ITK interprets it."""

    format: str  # "nifti1", "nifti2" or "nrrd"
    size: tuple[int, ...]  # voxels per spatial axis (and any further axes)
    spacing: tuple[float, ...]  # mm per spatial axis, as written
    dtype: np.dtype  # voxel type with its byte order
    gzip: bool  # voxel data is a gzip stream
    payload_start: int  # file offset where the (possibly compressed) data stream begins
    data_offset: int  # offset of the first voxel inside the (inflated) data stream
    encoding: str = "raw"

    @property
    def voxels(self) -> int:
        return math.prod(int(s) for s in self.size)

    @property
    def data_bytes(self) -> int:
        return self.voxels * self.dtype.itemsize

    @property
    def stream_bytes(self) -> int:
        """Bytes the (inflated) data stream must hold: what precedes the voxels, and the voxels."""
        return self.data_offset + self.data_bytes


@dataclass(frozen=True)
class VolumeBudget:
    """How large an upload may be once inflated."""

    max_voxels: int
    max_inflation_ratio: float = 0.0  # inflated bytes per file byte; 0 = no limit (labels: bounded by their image)
    ratio_floor_bytes: int = 64 << 20  # below this inflated size the ratio is not checked (small constant volumes)

    def allows(self, inflated_bytes: int, file_bytes: int) -> bool:
        return (not self.max_inflation_ratio or inflated_bytes <= self.ratio_floor_bytes
                or inflated_bytes <= self.max_inflation_ratio * file_bytes)


def volume_suffix(filename: str) -> str | None:
    name = filename.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


# -- headers ------------------------------------------------------------------------------------
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                 1280: "u8"}
_NRRD_TYPES = {
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i1": ("signed char", "int8", "int8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
           "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",),
    "f8": ("double",),
}
_NRRD_TYPE_OF = {alias: code for code, aliases in _NRRD_TYPES.items() for alias in aliases}
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "ascii": "text", "text": "text", "txt": "text"}


def _head(path: Path, compressed: bool, n: int) -> bytes:
    """The first ``n`` bytes of the file, inflated if it is a gzip file (reads at most what it needs)."""
    with open(path, "rb") as f:
        if not compressed:
            return f.read(n)
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = bytearray()
        while len(out) < n:
            piece = f.read(1 << 16)
            if not piece:
                break
            try:
                out += d.decompress(piece, n - len(out))
            except zlib.error:
                raise InvalidVolumeError(path.name, f"{UNREADABLE}: its compressed data is corrupt") from None
            if d.eof:
                break
        return bytes(out)


def _nifti_header(name: str, head: bytes, compressed: bool) -> RawHeader:
    for order in "<>":
        if len(head) >= 4 and struct.unpack(order + "i", head[:4])[0] in (348, 540):
            break
    else:
        raise InvalidVolumeError(name, f"{UNREADABLE}: bad NIfTI header size")
    sizeof = struct.unpack(order + "i", head[:4])[0]
    if len(head) < sizeof:
        raise InvalidVolumeError(name, "file is truncated inside its NIfTI header")
    if sizeof == 348:
        if head[344:348] not in (b"n+1\0",):
            raise InvalidVolumeError(name, f"{UNREADABLE}: NIfTI-1 magic is not 'n+1' (single file)")
        dims = struct.unpack(order + "8h", head[40:56])
        datatype = struct.unpack(order + "h", head[70:72])[0]
        pixdim = struct.unpack(order + "8f", head[76:108])
        vox_offset = struct.unpack(order + "f", head[108:112])[0]
        fmt = "nifti1"
    else:
        if head[4:8] != b"n+2\0":
            raise InvalidVolumeError(name, f"{UNREADABLE}: NIfTI-2 magic is not 'n+2' (single file)")
        datatype = struct.unpack(order + "h", head[12:14])[0]
        dims = struct.unpack(order + "8q", head[16:80])
        pixdim = struct.unpack(order + "8d", head[104:168])
        vox_offset = struct.unpack(order + "q", head[168:176])[0]
        fmt = "nifti2"
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise InvalidVolumeError(name, f"NIfTI header gives {ndim} dimensions")
    size = tuple(int(d) for d in dims[1 : ndim + 1])
    if min(size) < 1:
        raise InvalidVolumeError(name, f"NIfTI header gives size {size}")
    if datatype not in _NIFTI_DTYPES:
        raise InvalidVolumeError(name, f"NIfTI voxel type {datatype} is not supported (scalar integers or floats)")
    if vox_offset == 0:  # written by some tools; readers (ITK, nibabel) take it as "right after the header"
        vox_offset = sizeof + 4
    if not math.isfinite(vox_offset) or vox_offset < sizeof or vox_offset > MAX_HEADER_BYTES:
        raise InvalidVolumeError(name, f"NIfTI data offset {vox_offset} is invalid")
    dtype = np.dtype(_NIFTI_DTYPES[datatype]).newbyteorder(order)
    spacing = tuple(float(p) for p in pixdim[1 : min(ndim, 3) + 1])
    return RawHeader(fmt, size, spacing, dtype, compressed, 0, int(vox_offset), "gzip" if compressed else "raw")


def _nrrd_header(name: str, head: bytes) -> RawHeader:
    if not head.startswith(b"NRRD000"):
        raise InvalidVolumeError(name, f"{UNREADABLE}: no NRRD magic")
    end = re.search(rb"\r?\n\r?\n", head)
    if end is None:
        raise InvalidVolumeError(name, "NRRD header has no end (blank line) within 1 MiB")
    fields: dict[str, str] = {}
    for line in head[: end.start()].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    if "data file" in fields or "datafile" in fields:
        raise InvalidVolumeError(name, "detached NRRD ('data file') is not accepted: send the voxels in the file")
    try:
        ndim = int(fields["dimension"])
        size = tuple(int(s) for s in fields["sizes"].split())
        code = _NRRD_TYPE_OF[fields["type"].lower()]
    except (KeyError, ValueError):
        raise InvalidVolumeError(name, "NRRD header lacks a valid 'dimension', 'sizes' or scalar 'type'") from None
    if len(size) != ndim or not 1 <= ndim <= 7 or min(size) < 1:
        raise InvalidVolumeError(name, f"NRRD sizes {size} do not match dimension {ndim}")
    encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "").lower())
    if encoding is None:
        raise InvalidVolumeError(name, f"NRRD encoding '{fields.get('encoding')}' is not accepted (raw, gzip or ascii)")
    if any(k in fields for k in ("byte skip", "byteskip", "line skip", "lineskip")):
        raise InvalidVolumeError(name, "NRRD 'byte skip' / 'line skip' is not accepted")
    order = ">" if fields.get("endian", "little").lower() == "big" else "<"
    if "space directions" in fields:
        vectors = re.findall(r"\(([^)]*)\)|none", fields["space directions"])
        spacing = []
        for v in vectors:
            try:
                spacing.append(math.sqrt(sum(float(c) ** 2 for c in v.split(","))) if v else float("nan"))
            except ValueError:
                spacing.append(float("nan"))
    elif "spacings" in fields:
        spacing = [float(s) if s.lower() != "nan" else float("nan") for s in fields["spacings"].split()]
    else:
        spacing = [1.0] * ndim
    return RawHeader("nrrd", size, tuple(spacing[:3]), np.dtype(code).newbyteorder(order), encoding == "gzip",
                     end.end(), 0, encoding)


def read_raw_header(path: str | os.PathLike) -> RawHeader | None:
    """The header of a ``.nii``, ``.nii.gz`` or ``.nrrd`` file as written (None for other files)."""
    path = Path(path)
    suffix = volume_suffix(path.name)
    if suffix is None:
        return None
    if suffix == ".nrrd":
        return _nrrd_header(path.name, _head(path, False, MAX_HEADER_BYTES))
    compressed = suffix == ".nii.gz"
    head = _head(path, compressed, 544)
    if compressed and not head:
        raise InvalidVolumeError(path.name, f"{UNREADABLE}: empty or not gzip-compressed")
    return _nifti_header(path.name, head, compressed)


def check_header(name: str, header: RawHeader, max_voxels: int) -> None:
    """Dimensionality, size and spacing as the file states them (ITK would read spacing 0 as 1 mm)."""
    size = header.size
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3:
        raise InvalidVolumeError(name, f"{len(size)}D image; a 3D volume is required")
    if min(size) < 2:
        raise InvalidVolumeError(name, f"size {tuple(size)} is degenerate; a 3D volume is required")
    if header.voxels > max_voxels:
        raise InvalidVolumeError(name, f"{header.voxels} voxels {tuple(size)} exceeds the limit of {max_voxels}",
                                 too_large=True)
    spacing = header.spacing
    if len(spacing) < 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InvalidVolumeError(name, f"spacing {tuple(spacing)} must be positive and finite")


# -- streaming the data -------------------------------------------------------------------------------
def _stream(f: BinaryIO, header: RawHeader, limit: int, name: str) -> Iterator[bytes]:
    """The data stream (inflated if gzip, every member), stopping once more than ``limit`` bytes came out."""
    f.seek(header.payload_start)
    if not header.gzip:
        while piece := f.read(CHUNK):
            yield piece
        return
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    produced = 0
    pending = b""
    while True:
        if not pending:
            pending = f.read(CHUNK)
            if not pending:
                if not d.eof and produced:
                    raise InvalidVolumeError(name, "file is truncated or its compressed data is corrupt")
                return
        try:
            out = d.decompress(pending, CHUNK)
        except zlib.error:
            raise InvalidVolumeError(name, "file is truncated or its compressed data is corrupt") from None
        pending = d.unconsumed_tail
        produced += len(out)
        if out:
            yield out
        if produced > limit:
            return
        if d.eof:
            rest = d.unused_data or f.read(CHUNK)
            if not rest:
                return
            d, pending = zlib.decompressobj(16 + zlib.MAX_WBITS), rest  # a further gzip member


def check_volume_file(path: str | os.PathLike, budget: VolumeBudget, name: str | None = None,
                      expected_size: tuple[int, ...] | None = None) -> RawHeader:
    """Check a NIfTI / NRRD file before anything inflates it; return its header.

    Refuses (``InvalidVolumeError``): a header that is not a 3D volume within ``budget``, a size
    other than ``expected_size`` (a label must lie on its image), a compressed file that would
    inflate more than ``budget.max_inflation_ratio`` times, voxel data shorter or longer than the
    header says, and NaN or infinite voxels. Memory use is one 1 MiB piece at a time.
    """
    path = Path(path)
    name = name or path.name
    header = read_raw_header(path)
    if header is None:
        raise InvalidVolumeError(name, f"unsupported file type: send {', '.join(VOLUME_SUFFIXES)}")
    check_header(name, header, budget.max_voxels)
    if expected_size is not None and tuple(header.size[:3]) != tuple(expected_size):
        raise InvalidVolumeError(name, f"size {tuple(header.size[:3])} differs from its image's size "
                                       f"{tuple(expected_size)}")
    file_bytes = path.stat().st_size
    if header.gzip and not budget.allows(header.data_bytes, file_bytes):
        raise InvalidVolumeError(
            name, f"inflates to {header.data_bytes} bytes from {file_bytes} ({header.data_bytes / file_bytes:.0f}x, "
                  f"more than the {budget.max_inflation_ratio:g}x a medical image compresses): refused as a "
                  "decompression bomb", too_large=True)
    if header.encoding == "text":
        return header  # ASCII voxels: never larger in memory than on disk; ITK parses them
    limit = header.stream_bytes + TRAILING_SLACK
    floating = header.dtype.kind == "f"
    seen = 0
    carry = b""
    with open(path, "rb") as f:
        for piece in _stream(f, header, limit, name):
            start, seen = seen, seen + len(piece)
            if seen > limit:
                raise InvalidVolumeError(name, f"holds more data than its header's {header.voxels} voxels "
                                               "(trailing data): refused", too_large=True)
            if floating:
                lo, hi = max(header.data_offset, start), min(header.stream_bytes, seen)
                if hi > lo:
                    data = carry + piece[lo - start : hi - start]
                    whole = len(data) - len(data) % header.dtype.itemsize
                    if not np.isfinite(np.frombuffer(data[:whole], dtype=header.dtype)).all():
                        raise InvalidVolumeError(name, "holds NaN or infinite voxel values")
                    carry = data[whole:]
    if seen < header.stream_bytes:
        raise InvalidVolumeError(name, f"file is truncated: {seen - header.data_offset} of {header.data_bytes} "
                                       "voxel bytes")
    return header
