"""Prediction: the classes of a volume's lesions with any classifier model file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from radcascade.classifier.model_file import ClassifierCheckpoint
from radcascade.classifier.nets import LesionClassifierNet, RadiomicsInputsMissing, RadiomicsNet
from radcascade.patches import LesionGeometry, extract_patches, lesion_geometry
from radcascade.radiomics import lesion_features

@dataclass
class LesionPrediction:
    """Classifier output for one lesion."""

    class_index: int
    probabilities: np.ndarray  # [K], averaged over views
    entropy: float  # predictive entropy / log(K), 0 = certain, 1 = uniform
    view_disagreement: float  # std over views of the winning class's probability


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy / log(K) of each row of ``[L, K]`` probabilities (0 = certain, 1 = uniform)."""
    p = probs.clamp_min(1e-8)
    return -(p * p.log()).sum(1) / math.log(p.shape[1])


def predict_lesions(net: LesionClassifierNet, patches: torch.Tensor, batch: int = 128) -> list[LesionPrediction]:
    """Class, probabilities and uncertainty of every lesion of a study from its patches (batched)."""
    if isinstance(net, RadiomicsNet):
        raise RadiomicsInputsMissing("a radiomics classifier needs each lesion's mask, not only its patches: "
                                     "call classify_lesions(...) with the lesion regions")
    if len(patches) == 0:
        return []
    per_view = net.view_probabilities(patches, batch)
    L, V = per_view.shape[:2]
    mean = per_view.mean(1)
    ent = normalised_entropy(mean)
    cls = mean.argmax(1)
    spread = per_view.gather(2, cls.view(L, 1, 1).expand(L, V, 1)).squeeze(2).std(1, unbiased=False)
    mean_np = mean.cpu().numpy()
    return [LesionPrediction(int(c), mean_np[i], float(ent[i]), float(spread[i])) for i, c in enumerate(cls.tolist())]


@dataclass
class LesionRegion:
    """Where one lesion is in a volume: its geometry (for patches) and its mask (for radiomics),
    ``mask`` being a boolean crop whose first voxel sits at ``offset`` in the volume."""

    geometry: LesionGeometry
    mask: np.ndarray
    offset: tuple[int, int, int]


def lesion_regions(components: np.ndarray, ids: Sequence[int], spacing, offset=(0, 0, 0),
                   objects=None) -> list[LesionRegion]:
    """The regions of the connected components ``ids`` of a labelled array (``scipy.ndimage.label``)
    whose first voxel sits at ``offset`` in the volume (e.g. the lesion stage's crop box);
    ``objects``: its ``ndimage.find_objects``, when the caller has them already."""
    objects = ndimage.find_objects(components) if objects is None else objects
    out = []
    for comp in ids:
        sl = objects[comp - 1]
        mask = components[sl] == comp
        at = tuple(int(s.start + o) for s, o in zip(sl, offset))
        out.append(LesionRegion(lesion_geometry(mask, spacing, offset=at), mask, at))
    return out


def classify_lesions(net: nn.Module, ckpt: ClassifierCheckpoint, volume_hu: torch.Tensor, spacing,
                     regions: Sequence[LesionRegion]) -> list[LesionPrediction]:
    """Classify the lesions of one volume ``[X, Y, Z]`` (HU) with any classifier model file: CNN
    models from patches, radiomics models from the masks' features (and patches, when combined)."""
    if not regions:
        return []
    patches = None
    if not isinstance(net, RadiomicsNet) or net.uses_patches:
        patches = extract_patches(volume_hu, spacing, [r.geometry for r in regions], ckpt.patch)
    if not isinstance(net, RadiomicsNet):
        return predict_lesions(net, patches)
    vol = volume_hu.detach().float().cpu().numpy()
    feats = np.stack([lesion_features(vol, spacing, r.mask, r.offset, ckpt.radiomics.config).values for r in regions])
    device = next(net.parameters()).device
    probs = net.predict_proba(torch.as_tensor(feats, dtype=torch.float32, device=device),
                              None if patches is None else patches.to(device)).cpu()
    ent = normalised_entropy(probs)
    # one feature vector per lesion: no views to disagree
    return [LesionPrediction(int(row.argmax()), row.numpy(), float(e), 0.0) for row, e in zip(probs, ent)]
