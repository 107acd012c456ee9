"""Radiomics features per lesion: what a radiologist's research group would use instead of a CNN.

Computed with pyradiomics (the IBSI-aligned reference library; installed from its maintained fork
``pyradiomics-bhklab``, which builds from PyPI with the pinned numpy -- the original 3.1.0 sdist
does not) on the lesion's mask in the HU volume:

* ``shape``: volume, surface, sphericity, elongation, diameters ... (from the mask alone);
* ``firstorder``: mean, percentiles, std, max, entropy ... of the HU values inside the lesion;
* texture: ``glcm``, ``glrlm``, ``glszm``, ``gldm``, ``ngtdm`` (grey levels in bins of
  ``bin_width`` HU; lesions span only a few tens of HU, so the CT-customary 25 HU would leave one
  or two bins and no texture).

A feature that cannot be computed (a one-voxel lesion has no texture) is NaN; the classifier
replaces it by the training mean.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

FEATURE_CLASSES = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


@dataclass(frozen=True)
class RadiomicsConfig:
    """Which pyradiomics features, on what grey-level discretisation (stored in the model file)."""

    classes: tuple[str, ...] = FEATURE_CLASSES
    bin_width: float = 5.0
    pad_voxels: int = 2  # context kept around the lesion's bounding box (texture needs neighbours)

    def __post_init__(self) -> None:
        unknown = set(self.classes) - set(FEATURE_CLASSES)
        if unknown:
            raise ValueError(f"unknown radiomics feature classes {sorted(unknown)} (of {FEATURE_CLASSES})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RadiomicsConfig":
        return cls(tuple(d["classes"]), float(d["bin_width"]), int(d["pad_voxels"]))


@dataclass(frozen=True)
class LesionFeatures:
    """One lesion's radiomics features, in the order of ``names``."""

    names: tuple[str, ...]
    values: np.ndarray  # float64 [len(names)], NaN where a feature could not be computed


def _extractor(cfg: RadiomicsConfig):
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    ex = featureextractor.RadiomicsFeatureExtractor(binWidth=cfg.bin_width, minimumROIDimensions=1, label=1)
    ex.disableAllFeatures()
    for c in cfg.classes:
        ex.enableFeatureClassByName(c)
    return ex


_EXTRACTORS: dict[RadiomicsConfig, object] = {}
_NAMES: dict[RadiomicsConfig, tuple[str, ...]] = {}


def feature_names(cfg: RadiomicsConfig = RadiomicsConfig()) -> tuple[str, ...]:
    """The feature names ``cfg`` yields (``class_Feature``), in a fixed order."""
    if cfg not in _NAMES:
        z, y, x = np.mgrid[:9, :9, :9]
        ball = ((z - 4) ** 2 + (y - 4) ** 2 + (x - 4) ** 2 <= 9)
        img = np.where(ball, 20.0 + (x + y) % 3 * 10.0, 60.0)  # a textured ball: every feature defined
        _NAMES[cfg] = tuple(_execute(img, ball, (1.0, 1.0, 1.0), cfg).keys())
    return _NAMES[cfg]


def _execute(volume_hu: np.ndarray, mask: np.ndarray, spacing, cfg: RadiomicsConfig) -> dict[str, float]:
    import SimpleITK as sitk

    ex = _EXTRACTORS.get(cfg)
    if ex is None:
        ex = _EXTRACTORS[cfg] = _extractor(cfg)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume_hu, np.float32).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    msk = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(mask, np.uint8).transpose(2, 1, 0)))
    msk.CopyInformation(img)
    out = ex.execute(img, msk)
    # a few texture features (glcm MCC) come back as complex numbers with a zero imaginary part
    return {k[len("original_"):]: float(np.real(v)) for k, v in out.items() if k.startswith("original_")}


def lesion_features(volume_hu: np.ndarray, spacing, mask: np.ndarray, offset=(0, 0, 0),
                    cfg: RadiomicsConfig = RadiomicsConfig()) -> LesionFeatures:
    """Features of one lesion: ``mask`` (bool, ``[X, Y, Z]``) placed at ``offset`` in ``volume_hu``."""
    names = feature_names(cfg)
    mask = np.asarray(mask, bool)
    idx = np.nonzero(mask)
    if len(idx[0]) == 0:
        return LesionFeatures(names, np.full(len(names), np.nan))
    pos = [i + o for i, o in zip(idx, offset)]  # lesion voxels in volume coordinates
    lo = [max(0, int(p.min()) - cfg.pad_voxels) for p in pos]
    hi = [min(n, int(p.max()) + cfg.pad_voxels + 1) for p, n in zip(pos, volume_hu.shape)]
    crop = np.asarray(volume_hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], np.float32)
    full = np.zeros(crop.shape, bool)
    full[tuple(p - l for p, l in zip(pos, lo))] = True
    try:
        got = _execute(crop, full, spacing, cfg)
    except (ValueError, RuntimeError, IndexError, ZeroDivisionError):  # too small / flat for a feature class
        got = {}
    return LesionFeatures(names, np.array([got.get(n, np.nan) for n in names], dtype=np.float64))


def first_order_columns(names: Sequence[str]) -> list[int]:
    """Indices of the first-order (intensity histogram) features in ``names``."""
    return [i for i, n in enumerate(names) if n.startswith("firstorder_")]


@dataclass(frozen=True)
class SingleFeatureRule:
    """The one-feature baseline: the single feature whose value ranks the training lesions best."""

    name: str
    column: int
    sign: float  # +1: larger values mean the positive class; -1: smaller values do
    train_auc: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """Positive-class score per lesion (NaN ranks lowest)."""
        v = self.sign * np.asarray(features, float)[:, self.column]
        return np.nan_to_num(v, nan=-np.inf)


def best_single_feature(features: np.ndarray, labels: Sequence[int], names: Sequence[str],
                        columns: Sequence[int] | None = None, positive: int = 1) -> SingleFeatureRule:
    """Choose, on training lesions only, the feature (and its direction) with the highest ROC AUC."""
    from sklearn.metrics import roc_auc_score

    y = (np.asarray(labels) == positive).astype(int)
    if len(set(y)) < 2:
        raise ValueError("the one-feature baseline needs training lesions of both classes")
    best: SingleFeatureRule | None = None
    for j in columns if columns is not None else range(len(names)):
        v = np.asarray(features, float)[:, j]
        ok = np.isfinite(v)
        if ok.sum() < 2 or len(set(y[ok])) < 2 or np.ptp(v[ok]) == 0:
            continue
        auc = float(roc_auc_score(y[ok], v[ok]))
        rule = SingleFeatureRule(names[j], j, 1.0 if auc >= 0.5 else -1.0, max(auc, 1 - auc))
        if best is None or rule.train_auc > best.train_auc:
            best = rule
    if best is None:
        raise ValueError("no feature varies over the training lesions")
    return best
