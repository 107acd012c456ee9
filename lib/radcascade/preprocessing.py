"""Geometry and intensity helpers shared by training and inference (one code path for both).

All tensors are ``[C, X, Y, Z]`` (channel first, no batch) unless a name says otherwise.
Resampling runs on whatever device the tensor lives on, so on a GPU nothing goes back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# CT window of the organ stage (and of every model file that records none: the lesion networks before
# the sixth round too): soft tissue, wide enough to keep fat and enhancing rims apart.
HU_WINDOW = (-250.0, 350.0)
# The lesion stage's window, nnU-Net-style from the intensities inside the organ (0.5-99.5th percentiles of
# organ and lesion voxels in the training studies: 15..138 HU; lesions down to -23 HU), widened for lesion
# cores, low-dose noise and vessels. Lesions differ from the organ by 10-80 HU: in the wide window a 17 HU
# lesion was 3% of the input range and a clearly visible 37 mm one could be missed; in this one it is 7%.
# Trained the same way (cold, 30 min, 96 studies) it raised recall >= 10 mm on 100 validation studies from
# 0.62 to 0.82 (docs/benchmarks.md, sixth round).
LESION_HU_WINDOW = (-50.0, 200.0)


# Image noise (HU) from which a study is read as noisy (a low-dose protocol): between the quantum noise of a
# routine portal-venous protocol (about 6-15 HU in the liver) and that of a quarter-dose one (about 28-40 HU).
NOISY_STUDY_NOISE_HU = 20.0
_MAD_TO_SIGMA = 1.4826  # a normal distribution's standard deviation per median absolute deviation


def image_noise_hu(hu: np.ndarray, mask: np.ndarray, max_slices: int = 32) -> float | None:
    """Quantum noise of a CT (standard deviation, HU) measured inside ``mask`` (e.g. the organ): the
    robust spread (median absolute deviation) of differences between x-neighbours that both lie in the
    mask, divided by sqrt(2). Vessels, lesion edges and organ texture barely move a median; about
    ``max_slices`` evenly spaced z-slices are read (milliseconds on a 2-litre organ). Noise that is
    correlated between neighbours (a smooth reconstruction kernel) reads lower than an ROI's standard
    deviation. None when the mask holds too few neighbour pairs (under 200)."""
    step = max(1, int(np.ceil(hu.shape[2] / max_slices)))
    image, inside = hu[:, :, ::step], mask[:, :, ::step]
    pairs = inside[1:] & inside[:-1]
    if np.count_nonzero(pairs) < 200:
        return None
    diffs = (image[1:].astype(np.float32) - image[:-1].astype(np.float32))[pairs]
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    return _MAD_TO_SIGMA * mad / float(np.sqrt(2.0))


def valid_window(window) -> tuple[float, float]:
    """``(lo, hi)`` HU as floats; a window that is not two finite numbers with lo < hi is refused."""
    lo, hi = (float(v) for v in window)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"a CT window needs two finite HU values, low < high (got {lo}, {hi})")
    return lo, hi


def normalize_hu(t: torch.Tensor, window: tuple[float, float] = HU_WINDOW) -> torch.Tensor:
    """Clip to the window and scale to [0, 1]."""
    lo, hi = window
    return ((t.clamp(lo, hi) - lo) / (hi - lo)).to(torch.float32)


def normalized_on_grid(t: torch.Tensor, size, window: tuple[float, float] = HU_WINDOW) -> torch.Tensor:
    """``resample(normalize_hu(t), size)`` with the scaling done after resampling (both are linear
    with weights summing to one, so only the clip must come first): one full-resolution pass, not three."""
    lo, hi = window
    return resample(t.to(torch.float32).clamp(lo, hi), size).sub_(lo).div_(hi - lo)  # clamp made a new tensor


def shape_at_spacing(shape, spacing, target_spacing) -> tuple[int, int, int]:
    """Voxel counts covering the same extent as ``shape`` at ``target_spacing``."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def resample(t: torch.Tensor, size, mode: str = "linear") -> torch.Tensor:
    """Resample ``[C, X, Y, Z]`` to ``size``; corners of the extent stay aligned (align_corners=False).

    ``mode="linear"``: box-filter (area) downsampling on axes that shrink, trilinear on axes that
    grow, so heavy downsampling (0.8 mm -> 5 mm) does not alias noise. ``mode="nearest"``: labels.
    """
    size = tuple(int(s) for s in size)
    if tuple(t.shape[1:]) == size:
        return t
    order = sorted((1, 2, 3), key=lambda d: -t.stride(d))  # spatial axes, outermost in memory first
    if order != [1, 2, 3]:  # e.g. a volume viewed (x, y, z) over ITK's (z, y, x) buffer: pool it as stored
        back = [0] + [order.index(d) + 1 for d in (1, 2, 3)]
        return resample(t.permute(0, *order), [size[d - 1] for d in order], mode).permute(*back).contiguous()
    x = t.unsqueeze(0)
    if mode == "nearest":
        return F.interpolate(x.float(), size=size, mode="nearest-exact").squeeze(0).to(t.dtype)
    x = x.float()
    shrink = tuple(min(a, b) for a, b in zip(x.shape[2:], size))
    if shrink != tuple(x.shape[2:]):
        x = F.adaptive_avg_pool3d(x, shrink)
    if shrink != size:
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return x.squeeze(0)


def pad_to_multiple(t: torch.Tensor, divisor: int, minimum: tuple[int, ...] | None = None) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial dims of ``[C, ...]`` up to a multiple of ``divisor``; return the crop back."""
    spatial = t.shape[1:]
    target = [int(np.ceil(n / divisor) * divisor) for n in spatial]
    if minimum is not None:
        target = [max(a, int(np.ceil(m / divisor) * divisor)) for a, m in zip(target, minimum)]
    pads: list[int] = []
    for n, m in reversed(list(zip(spatial, target))):
        pads += [0, m - n]
    back = (slice(None),) + tuple(slice(0, n) for n in spatial)
    return (F.pad(t, pads) if any(pads) else t), back


def _linear_taps(lo: int, hi: int, n_full: int, n_coarse: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For full voxels ``lo..hi-1`` of an axis: the two coarse neighbours and the weight of the second
    (align_corners=False, clamped at the borders: what ``F.interpolate(mode="trilinear")`` does)."""
    idx = torch.arange(lo, hi, device=device, dtype=torch.float64)
    src = ((idx + 0.5) * (n_coarse / n_full) - 0.5).clamp(0, n_coarse - 1)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=n_coarse - 1)
    return i0, i1, (src - i0).float()


def sample_region(coarse: torch.Tensor, full_shape, box: "BoundingBox") -> torch.Tensor:
    """Trilinearly sample a coarse map ``[C, x, y, z]`` (covering the whole full-resolution extent)
    at the full-resolution voxels inside ``box``, without building the full-resolution volume.

    Trilinear interpolation is separable: one 1-D linear pass per axis (two gathers and a lerp), the
    largest of them only over the box's voxels; no coordinate grid is built."""
    out = coarse.float()
    for axis in (3, 2, 1):  # z first: the last pass (x) is the only one of the box's full size
        n_full, n_coarse = int(full_shape[axis - 1]), out.shape[axis]
        i0, i1, w = _linear_taps(box.lo[axis - 1], box.hi[axis - 1], n_full, n_coarse, out.device)
        view = [1, 1, 1, 1]
        view[axis] = -1
        out = torch.lerp(out.index_select(axis, i0), out.index_select(axis, i1), w.view(view))
    return out


def upsample_above(coarse: torch.Tensor, size, threshold: float) -> tuple[torch.Tensor, list["BoundingBox"]]:
    """Trilinear ``resample(coarse, size)`` (no axis shrinks), evaluated only where it can exceed
    ``threshold``; 0 elsewhere.

    A trilinear value is a convex mix of its coarse neighbours, so it exceeds the threshold only next
    to a coarse voxel that does: each group of those (dilated by one coarse voxel) is upsampled inside
    its own full-resolution box.  Returns the map and the boxes (everything above the threshold lies
    in them); the work grows with the regions above the threshold, not with the whole extent."""
    size = tuple(int(s) for s in size)
    above = (coarse[0] > threshold).cpu().numpy()
    out = torch.zeros((coarse.shape[0], *size), dtype=torch.float32, device=coarse.device)
    if not above.any():
        return out, []
    groups, _ = ndimage.label(ndimage.binary_dilation(above, np.ones((3, 3, 3), bool)))
    # i0 of every full voxel per axis: a full voxel may exceed the threshold only if its i0 is in a group's box
    first = [_linear_taps(0, n, n, c, "cpu")[0].numpy() for n, c in zip(size, coarse.shape[1:])]
    boxes = []
    for sl in ndimage.find_objects(groups):
        lo = tuple(int(np.searchsorted(f, s.start, "left")) for f, s in zip(first, sl))
        hi = tuple(int(np.searchsorted(f, s.stop, "left")) for f, s in zip(first, sl))
        box = BoundingBox(lo, hi)
        if all(h > l for l, h in zip(lo, hi)):
            out[(slice(None),) + box.slices] = sample_region(coarse, size, box)
            boxes.append(box)
    return out, boxes


def dilate_box(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of a 3-D bool mask by a ``(2r+1)^3`` cube (what a cubic max-pool gives), as
    shifted ORs along each axis in turn: a few byte-wide passes instead of a max over 125 neighbours."""
    x = mask
    for axis in range(3):
        out = x.clone()
        n = x.shape[axis]
        for s in range(1, min(radius, n - 1) + 1):
            out.narrow(axis, s, n - s).logical_or_(x.narrow(axis, 0, n - s))
            out.narrow(axis, 0, n - s).logical_or_(x.narrow(axis, s, n - s))
        x = out
    return x


@dataclass(frozen=True)
class BoundingBox:
    """Half-open voxel box ``[lo, hi)`` per axis (x, y, z)."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @classmethod
    def of_mask(cls, mask: np.ndarray | torch.Tensor) -> "BoundingBox | None":
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if not m.any():
            return None
        lo, hi = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            nz = np.flatnonzero(m.any(axis=other))
            lo.append(int(nz[0]))
            hi.append(int(nz[-1]) + 1)
        return cls(tuple(lo), tuple(hi))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(h - l for l, h in zip(self.lo, self.hi))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(l, h) for l, h in zip(self.lo, self.hi))

    def scaled(self, factors) -> "BoundingBox":
        """Map a box on one grid to another grid whose voxel counts are ``factors`` times larger."""
        lo = tuple(int(np.floor(l * f)) for l, f in zip(self.lo, factors))
        hi = tuple(int(np.ceil(h * f)) for h, f in zip(self.hi, factors))
        return BoundingBox(lo, hi)

    def expanded(self, margin_vox, shape) -> "BoundingBox":
        lo = tuple(max(0, l - int(m)) for l, m in zip(self.lo, margin_vox))
        hi = tuple(min(n, h + int(m)) for h, m, n in zip(self.hi, margin_vox, shape))
        return BoundingBox(lo, hi)

    def to_json(self) -> dict:
        return {"lo": list(self.lo), "hi": list(self.hi)}
