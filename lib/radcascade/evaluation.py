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
