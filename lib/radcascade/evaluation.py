"""Evaluation: segmentation overlap, lesion-wise detection and classification metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(p, t).sum() / total)


@dataclass
class ClassificationMetrics:
    n: int
    accuracy: float | None
    auc: float | None  # binary: ROC AUC of the second class; multi-class: macro one-vs-rest

    def to_json(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "auc": self.auc}


def classification_metrics(y_true, probs, n_classes: int) -> ClassificationMetrics:
    """Accuracy and AUC; AUC is None when the set holds a single class (it is undefined then)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=float)
    if len(y) == 0:
        return ClassificationMetrics(0, None, None)
    acc = float((p.argmax(1) == y).mean())
    auc = None
    if len(np.unique(y)) > 1:
        if n_classes == 2:
            auc = float(roc_auc_score(y, p[:, 1]))
        else:
            present = np.unique(y)
            auc = float(roc_auc_score(y, p[:, present] / p[:, present].sum(1, keepdims=True), multi_class="ovr",
                                      labels=present)) if len(present) > 2 else None
    return ClassificationMetrics(len(y), acc, auc)


@dataclass
class LesionDetection:
    """Lesion-wise detection counts for one or more studies (connected components, 26-connectivity)."""

    true_lesions: int
    detected: int
    predicted_lesions: int
    false_positives: int

    @property
    def recall(self) -> float | None:
        return self.detected / self.true_lesions if self.true_lesions else None

    def __add__(self, other: "LesionDetection") -> "LesionDetection":
        return LesionDetection(self.true_lesions + other.true_lesions, self.detected + other.detected,
                               self.predicted_lesions + other.predicted_lesions,
                               self.false_positives + other.false_positives)


def lesion_detection(pred: np.ndarray, truth: np.ndarray, min_iou: float = 0.1) -> LesionDetection:
    """A true lesion is *detected* when some predicted lesion overlaps it with IoU >= ``min_iou``;
    a predicted lesion with IoU < ``min_iou`` against every true lesion is a false positive."""
    from scipy import ndimage

    structure = np.ones((3, 3, 3), bool)
    tl, nt = ndimage.label(np.asarray(truth, bool), structure)
    pl, npred = ndimage.label(np.asarray(pred, bool), structure)
    if nt == 0 or npred == 0:
        return LesionDetection(nt, 0, npred, npred)
    both = (tl > 0) & (pl > 0)
    pairs, inter = np.unique(np.stack([tl[both], pl[both]]), axis=1, return_counts=True)
    t_size = np.bincount(tl.ravel(), minlength=nt + 1)
    p_size = np.bincount(pl.ravel(), minlength=npred + 1)
    iou = inter / (t_size[pairs[0]] + p_size[pairs[1]] - inter)
    hit = iou >= min_iou
    return LesionDetection(nt, len(np.unique(pairs[0][hit])), npred, npred - len(np.unique(pairs[1][hit])))
