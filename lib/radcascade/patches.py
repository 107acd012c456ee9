"""2.5D lesion patches for ImageNet-pretrained 2D CNNs.

A lesion (one connected component) becomes ``V`` RGB patches of ``size x size`` pixels, sampled
in physical millimetres around its centroid, so anisotropic voxels and any scan resolution give
the same picture:

* ``orthogonal`` (default): R, G, B = the axial, coronal and sagittal planes through the centre;
  views are the centre and two shifts of a quarter of the lesion's extent along z.
* ``adjacent``: R, G, B = three adjacent axial planes (centre -/+ one slice thickness); views as above.

The field of view is the lesion's largest extent times ``context`` (at least ``min_fov_mm``), so
the patch shows the lesion with its margin and the surrounding organ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# Soft-tissue window for the patches (HU); ImageNet statistics applied afterwards.
PATCH_WINDOW = (-50.0, 200.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PatchConfig:
    """How lesions are turned into patches (stored in the classifier checkpoint)."""

    size: int = 64
    mode: str = "orthogonal"  # or "adjacent"
    context: float = 1.5
    min_fov_mm: float = 16.0
    views: int = 3

    def __post_init__(self) -> None:
        if self.mode not in ("orthogonal", "adjacent"):
            raise ValueError(f"unknown patch mode '{self.mode}' (orthogonal or adjacent)")
        if self.views not in (1, 3):
            raise ValueError("views must be 1 or 3")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LesionGeometry:
    """Where a lesion is: centroid (continuous voxel index) and extent in mm."""

    centre_vox: tuple[float, float, float]
    extent_mm: tuple[float, float, float]


def lesion_geometry(mask: np.ndarray, spacing, offset=(0, 0, 0)) -> LesionGeometry:
    """Centroid and bounding extent of one lesion mask (``offset`` = its crop's origin)."""
    centre = ndimage.center_of_mass(mask)
    idx = np.nonzero(mask)
    extent = tuple(float((i.max() - i.min() + 1) * s) for i, s in zip(idx, spacing))
    return LesionGeometry(tuple(float(c + o) for c, o in zip(centre, offset)), extent)


def _plane_grid(shape, spacing, centre, u, v, fov_mm: float, size: int, device) -> torch.Tensor:
    """grid_sample coordinates of a ``size x size`` plane spanned by unit axes ``u``, ``v`` (voxel axes)."""
    t = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size - 0.5  # -0.5..0.5
    offsets_mm = t * fov_mm
    a, b = torch.meshgrid(offsets_mm, offsets_mm, indexing="ij")
    pts = []
    for axis in range(3):
        mm = a * u[axis] + b * v[axis]
        vox = centre[axis] + mm / spacing[axis]
        pts.append((vox + 0.5) / shape[axis] * 2 - 1)  # align_corners=False normalisation
    # grid_sample wants (w, h, d) = (z, y, x) order for a [N, C, X, Y, Z] volume.
    return torch.stack((pts[2], pts[1], pts[0]), dim=-1)


def extract_patches(
    volume: torch.Tensor, spacing, lesions: list[LesionGeometry], cfg: PatchConfig
) -> torch.Tensor:
    """Patches ``[n_lesions, views, 3, size, size]`` (ImageNet-normalised) from a HU volume ``[X, Y, Z]``."""
    if not lesions:
        return torch.zeros((0, cfg.views, 3, cfg.size, cfg.size))
    device = volume.device
    shape = volume.shape
    ex, ey, ez = (1, 0, 0), (0, 1, 0), (0, 0, 1)
    grids = []
    for les in lesions:
        fov = max(cfg.min_fov_mm, cfg.context * max(les.extent_mm))
        shifts = (0.0,) if cfg.views == 1 else (0.0, -0.25 * les.extent_mm[2], 0.25 * les.extent_mm[2])
        for dz in shifts:
            c = (les.centre_vox[0], les.centre_vox[1], les.centre_vox[2] + dz / spacing[2])
            if cfg.mode == "orthogonal":
                planes = [(c, ex, ey), (c, ex, ez), (c, ey, ez)]
            else:
                planes = [((c[0], c[1], c[2] + k), ex, ey) for k in (-1.0, 0.0, 1.0)]
            for centre, u, v in planes:
                grids.append(_plane_grid(shape, spacing, centre, u, v, fov, cfg.size, device))
    grid = torch.stack(grids).unsqueeze(0)  # [1, P, S, S, 3]: the P planes as output depth
    src = volume.float()[None, None]
    planes = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    lo, hi = PATCH_WINDOW
    planes = (planes.clamp(lo, hi) - lo) / (hi - lo)
    patches = planes.view(len(lesions), cfg.views, 3, cfg.size, cfg.size)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1)
    return (patches - mean) / std
