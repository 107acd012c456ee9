"""Grad-CAM for the lesion classifier (Erickson et al.: show what the network looked at).

For each lesion, Grad-CAM of the predicted class on the top block of the CNN, computed on the
lesion's central patch, then painted back into the volume on the axial plane through the lesion
centre, so it can be overlaid in Slicer. The peak is reported in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from radcascade.classifier import LesionClassifierNet
from radcascade.patches import LesionGeometry, PatchConfig, extract_patches


@dataclass
class SaliencyPeak:
    lesion_id: int
    peak_voxel: tuple[float, float, float]
    peak_mm: tuple[float, float, float]


def grad_cam(net: LesionClassifierNet, patches: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Grad-CAM maps ``[N, S, S]`` in [0, 1] for ``patches [N, 3, S, S]`` and target ``classes``."""
    target = net._blocks[-1]
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inp, out):
        out = out[-1] if isinstance(out, (list, tuple)) else out
        out.retain_grad()
        store["act"] = out

    handle = target[-1].register_forward_hook(hook) if isinstance(target, torch.nn.ModuleList) else target.register_forward_hook(hook)
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad():
            x = patches.detach().clone().requires_grad_(True)
            logits = net(x)
            score = logits.gather(1, torch.as_tensor(classes, device=logits.device).view(-1, 1)).sum()
            score.backward()
        act, grad = store["act"], store["act"].grad
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=patches.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cam = cam / cam.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1)
    finally:
        handle.remove()
        net.train(was_training)
        net.zero_grad(set_to_none=True)
    return cam.detach()


def saliency_volume(net: LesionClassifierNet, volume: torch.Tensor, spacing, geoms: list[LesionGeometry],
                    classes: list[int], cfg: PatchConfig, index_to_physical) -> tuple[np.ndarray, list[SaliencyPeak]]:
    """A uint8 volume (0-255) with each lesion's Grad-CAM on its axial plane, and the peaks."""
    out = np.zeros(tuple(volume.shape), np.uint8)
    if not geoms:
        return out, []
    single = PatchConfig(size=cfg.size, mode=cfg.mode, context=cfg.context, min_fov_mm=cfg.min_fov_mm, views=1)
    patches = extract_patches(volume, spacing, geoms, single)[:, 0]
    cams = grad_cam(net, patches, classes).cpu().numpy()
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
            values = (cam[np.ix_(ok_x, ok_y)] * 255).astype(np.uint8)
            region = out[np.ix_(xs[ok_x], ys[ok_y], [z])][..., 0]
            out[np.ix_(xs[ok_x], ys[ok_y], [z])] = np.maximum(region, values)[..., None]
        r, c = np.unravel_index(int(cam.argmax()), cam.shape)
        vox = (g.centre_vox[0] + t[r] * fov / spacing[0], g.centre_vox[1] + t[c] * fov / spacing[1], g.centre_vox[2])
        peaks.append(SaliencyPeak(i, tuple(round(float(v), 2) for v in vox),
                                  tuple(round(float(v), 2) for v in index_to_physical(vox))))
    return out, peaks
