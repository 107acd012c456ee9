"""Saliency maps for the lesion classifier (Erickson et al.: show what the network looked at),
computed with MONAI's own implementations in ``monai.visualize``:

* ``gradcam`` -- :class:`monai.visualize.GradCAM` of the predicted class on the deepest block whose
  output still has at least 4x4 cells for the patch (at 64 px the top block is 2x2: too coarse to
  say which part of a lesion mattered).  The class score is its log-probability, not its logit:
  its gradient is the evidence for that class *against the others*.  On a logit, a class whose
  head weights are mostly negative (with two classes, often the first) gets a map that is zero
  everywhere after Grad-CAM's ReLU, i.e. no explanation at all;
* ``occlusion`` -- :class:`monai.visualize.OcclusionSensitivity`: how much the predicted class's
  probability drops when a square of an eighth of the patch is occluded around each pixel (the
  seed's occlusion maps; a quarter of the patch smears a rim-sized cue over the organ around it).

For each lesion the map is computed on its central axial patch, painted back into the volume on the
axial plane through the lesion centre (to overlay in Slicer), and its peak reported in millimetres.
Radiomics models have no image-space map: they raise :class:`SaliencyUnavailable`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from radcascade.classifier import LesionClassifierNet
from radcascade.patches import LesionGeometry, PatchConfig, extract_patches

METHODS = ("gradcam", "occlusion")


class SaliencyUnavailable(ValueError):
    """The model has no image-space saliency (e.g. a radiomics classifier)."""


@dataclass
class SaliencyPeak:
    lesion_id: int
    peak_voxel: tuple[float, float, float]
    peak_mm: tuple[float, float, float]


def _check(net) -> None:
    if not isinstance(net, LesionClassifierNet):
        raise SaliencyUnavailable("saliency maps need a CNN classifier; this one classifies radiomics features of "
                                  "the lesion mask (its model file's summary lists the features)")


def _layer_name(net: LesionClassifierNet, size: int, min_cells: int = 4) -> str:
    """Name of the deepest block whose output is at least ``min_cells`` wide for ``size`` px patches."""
    widths: dict[int, int] = {}
    hooks = [b.register_forward_hook(lambda _m, _i, out, k=k: widths.__setitem__(
        k, (out[-1] if isinstance(out, (list, tuple)) else out).shape[-1])) for k, b in enumerate(_block_outputs(net))]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, size, size, device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    k = max((k for k, w in widths.items() if w >= min_cells), default=len(widths) - 1)
    target = _block_outputs(net)[k]
    return next(name for name, m in net.named_modules() if m is target)


def _block_outputs(net: LesionClassifierNet) -> list[torch.nn.Module]:
    """The module whose output is each block's output (the last of a group of modules)."""
    return [b[-1] if isinstance(b, torch.nn.ModuleList) else b for b in net._blocks]


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    maps = maps.clamp_min(0)
    return maps / maps.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1)


class _LogProbabilities(torch.nn.Module):
    """The classifier with log-softmax on top (Grad-CAM's class score; see the module docstring)."""

    def __init__(self, net: LesionClassifierNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(x).float(), dim=1)


def grad_cam(net: LesionClassifierNet, patches: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Grad-CAM maps ``[N, S, S]`` in [0, 1] (monai.visualize.GradCAM) for ``patches [N, 3, S, S]``."""
    from monai.visualize import GradCAM

    _check(net)
    net = copy.deepcopy(net).eval()  # MONAI's hooks stay on the module: keep them off the served network
    layer = _layer_name(net, patches.shape[-1])
    cam = GradCAM(_LogProbabilities(net).eval(), target_layers=f"net.{layer}", postprocessing=lambda x: x)
    out = torch.zeros(patches.shape[0], *patches.shape[-2:])
    cls = torch.as_tensor(classes)
    with torch.enable_grad():
        for c in cls.unique().tolist():  # MONAI scores one class index for the whole batch
            idx = (cls == c).nonzero().flatten()
            x = patches[idx].detach().clone().requires_grad_(True)
            out[idx] = cam(x, class_idx=int(c))[:, 0].detach().float().cpu()
    return _normalise(out)


def occlusion_map(net: LesionClassifierNet, patches: torch.Tensor, classes: list[int],
                  mask_fraction: float = 0.125) -> torch.Tensor:
    """Occlusion sensitivity ``[N, S, S]`` in [0, 1] (monai.visualize.OcclusionSensitivity): the drop of
    each patch's class probability when the region around a pixel is occluded (0 = no drop)."""
    from monai.visualize import OcclusionSensitivity

    _check(net)
    net = net.eval()
    size = patches.shape[-1]
    occ = OcclusionSensitivity(net, mask_size=max(3, int(size * mask_fraction)), n_batch=64, verbose=False)
    out = torch.zeros(patches.shape[0], *patches.shape[-2:])
    with torch.no_grad():
        base = torch.softmax(net(patches), 1)
        for i, c in enumerate(classes):
            occ_map, _ = occ(patches[i:i + 1])  # [1, K, S, S]: class probabilities with the region occluded
            prob = torch.as_tensor(occ_map[0, int(c)]).float().cpu()
            out[i] = base[i, int(c)].cpu() - prob
    return _normalise(out)


def saliency_maps(net: LesionClassifierNet, patches: torch.Tensor, classes: list[int], method: str = "gradcam") -> torch.Tensor:
    if method == "gradcam":
        return grad_cam(net, patches, classes)
    if method == "occlusion":
        return occlusion_map(net, patches, classes)
    raise ValueError(f"unknown saliency method '{method}' (one of {METHODS})")


def saliency_volume(net: LesionClassifierNet, volume: torch.Tensor, spacing, geoms: list[LesionGeometry],
                    classes: list[int], cfg: PatchConfig, index_to_physical,
                    method: str = "gradcam") -> tuple[np.ndarray, list[SaliencyPeak]]:
    """A uint8 volume (0-255) with each lesion's map on its axial plane, and the peaks."""
    _check(net)
    out = np.zeros(tuple(volume.shape), np.uint8)
    if not geoms:
        return out, []
    single = PatchConfig(size=cfg.size, mode=cfg.mode, context=cfg.context, min_fov_mm=cfg.min_fov_mm, views=1)
    patches = extract_patches(volume, spacing, geoms, single)[:, 0]
    cams = saliency_maps(net, patches, classes, method).cpu().numpy()
    peaks = []
    size = cfg.size
    t = (np.arange(size) + 0.5) / size - 0.5
    for i, (g, cam) in enumerate(zip(geoms, cams), start=1):
        fov = max(cfg.min_fov_mm, cfg.context * max(g.extent_mm))
        # axial plane of the patch: rows along x, columns along y (see patches._plane_grid)
        xs = np.round(g.centre_vox[0] + t * fov / spacing[0]).astype(int)
        ys = np.round(g.centre_vox[1] + t * fov / spacing[1]).astype(int)
        z = int(round(g.centre_vox[2]))
        ok_x = (xs >= 0) & (xs < out.shape[0])
        ok_y = (ys >= 0) & (ys < out.shape[1])
        if 0 <= z < out.shape[2]:
            # several patch pixels fall in one voxel when the patch is finer than the scan: keep their max
            values = np.round(cam[np.ix_(ok_x, ok_y)] * 255).astype(np.uint8)
            rows, cols = np.meshgrid(xs[ok_x], ys[ok_y], indexing="ij")
            plane = out[:, :, z]
            np.maximum.at(plane, (rows, cols), values)
            out[:, :, z] = plane
        r, c = np.unravel_index(int(cam.argmax()), cam.shape)
        vox = (g.centre_vox[0] + t[r] * fov / spacing[0], g.centre_vox[1] + t[c] * fov / spacing[1], g.centre_vox[2])
        peaks.append(SaliencyPeak(i, tuple(round(float(v), 2) for v in vox),
                                  tuple(round(float(v), 2) for v in index_to_physical(vox))))
    return out, peaks
