"""Training samples: the lesions of labelled studies, and their study-level holdout split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from radcascade.classifier.nets import RadiomicsInputsMissing
from radcascade.labels import FIRST_LESION_VALUE
from radcascade.patches import PatchConfig, extract_patches, lesion_geometry
from radcascade.radiomics import RadiomicsConfig, lesion_features

@dataclass
class LesionSample:
    """One lesion for training/evaluation: its study, class index, patches ``[V, 3, S, S]`` and
    (for the radiomics modes) its radiomics feature vector."""

    study: str
    label: int
    patches: torch.Tensor
    radiomics: np.ndarray | None = None


def lesion_components(label: np.ndarray) -> list[tuple[tuple[slice, ...], np.ndarray, int]]:
    """Connected lesions of a contract-valued label: (bounding slices, mask within them, class value by majority)."""
    lesions = label >= FIRST_LESION_VALUE
    comps, _ = ndimage.label(lesions)
    out = []
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        region = comps[sl] == k
        values = label[sl][region]
        value = int(np.bincount(values).argmax())
        out.append((sl, region, value))
    return out


def lesion_samples(study: str, volume_hu: np.ndarray, spacing, label: np.ndarray, cfg: PatchConfig,
                   min_voxels: int = 3, radiomics: RadiomicsConfig | None = None) -> list[LesionSample]:
    """Every lesion of a study as a sample (class index = value - 2); with ``radiomics``, its features too."""
    geoms, classes, feats = [], [], []
    for sl, region, value in lesion_components(label):
        if region.sum() < min_voxels:
            continue
        offset = tuple(s.start for s in sl)
        geoms.append(lesion_geometry(region, spacing, offset=offset))
        classes.append(value - FIRST_LESION_VALUE)
        feats.append(lesion_features(volume_hu, spacing, region, offset, radiomics).values if radiomics else None)
    patches = extract_patches(torch.from_numpy(volume_hu), spacing, geoms, cfg)
    return [LesionSample(study, c, p, f) for c, p, f in zip(classes, patches, feats)]


def split_by_study(samples: Sequence[LesionSample], val_fraction: float, seed: int):
    """Stratified holdout at the study level: no study has lesions on both sides."""
    from sklearn.model_selection import StratifiedGroupKFold

    if len(samples) < 4:
        return list(samples), []
    y = np.array([s.label for s in samples])
    groups = np.array([s.study for s in samples])
    n_splits = max(2, int(round(1 / max(val_fraction, 1e-3))))
    n_splits = min(n_splits, len(set(groups)))
    if n_splits < 2:
        return list(samples), []
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(y)), y, groups))
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


def stack_patches(samples: Sequence[LesionSample]) -> tuple[torch.Tensor, torch.Tensor]:
    if not samples:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.stack([s.patches for s in samples]), torch.tensor([s.label for s in samples])


def radiomics_matrix(samples: Sequence[LesionSample]) -> torch.Tensor:
    missing = sum(s.radiomics is None for s in samples)
    if missing:
        raise RadiomicsInputsMissing(f"{missing} of {len(samples)} lesions have no radiomics features "
                                     f"(build the samples with lesion_samples(..., radiomics=RadiomicsConfig()))")
    return torch.as_tensor(np.stack([s.radiomics for s in samples]), dtype=torch.float32)
