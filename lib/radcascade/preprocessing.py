"""Geometry and intensity helpers shared by training and inference (one code path for both).

All tensors are ``[C, X, Y, Z]`` (channel first, no batch) unless a name says otherwise.
Resampling runs on whatever device the tensor lives on, so on a GPU nothing goes back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# CT window fed to both UNets: soft tissue, wide enough to keep fat and enhancing rims apart.
HU_WINDOW = (-250.0, 350.0)


def normalize_hu(t: torch.Tensor, window: tuple[float, float] = HU_WINDOW) -> torch.Tensor:
    """Clip to the window and scale to [0, 1]."""
    lo, hi = window
    return ((t.clamp(lo, hi) - lo) / (hi - lo)).to(torch.float32)


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


def sample_region(coarse: torch.Tensor, full_shape, box: "BoundingBox") -> torch.Tensor:
    """Trilinearly sample a coarse map ``[C, x, y, z]`` (covering the whole full-resolution extent)
    at the full-resolution voxels inside ``box``, without building the full-resolution volume."""
    coords = []
    for axis, (n_full, n_coarse) in enumerate(zip(full_shape, coarse.shape[1:])):
        idx = torch.arange(box.lo[axis], box.hi[axis], device=coarse.device, dtype=torch.float32)
        # Continuous coarse index of a full voxel centre (align_corners=False convention),
        # expressed in grid_sample's normalised [-1, 1] coordinates.
        coords.append(((idx + 0.5) / n_full) * 2.0 - 1.0)
        del n_coarse
    gx, gy, gz = torch.meshgrid(*coords, indexing="ij")
    # grid_sample on a 5D input [N, C, D, H, W] takes (w, h, d) = (z, y, x) coordinates last.
    grid = torch.stack((gz, gy, gx), dim=-1).unsqueeze(0)
    out = F.grid_sample(coarse.unsqueeze(0).float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.squeeze(0)


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
