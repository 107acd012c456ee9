"""Evaluation: segmentation overlap, lesion-wise detection and classification metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(p, t).sum() / total)


def binary_auroc(scores, positive) -> float | None:
    """ROC AUC of ``scores`` for the ``positive`` flags (the Mann-Whitney probability that a positive
    scores above a negative, ties counting half); None when either group is empty."""
    s = np.asarray(scores, dtype=float)
    p = np.asarray(positive, dtype=bool)
    pos, neg = s[p], s[~p]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


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


@dataclass(frozen=True)
class LesionMatch:
    """Per-lesion matching of a prediction against the truth (connected components, 26-connectivity)."""

    true_voxels: np.ndarray  # voxels of each true lesion
    true_detected: np.ndarray  # bool per true lesion: some predicted lesion overlaps it with IoU >= min_iou
    predicted_voxels: np.ndarray
    predicted_hit: np.ndarray  # bool per predicted lesion: it matches some true lesion (else a false positive)

    def detection(self) -> LesionDetection:
        n_pred = len(self.predicted_hit)
        return LesionDetection(len(self.true_detected), int(self.true_detected.sum()), n_pred,
                               n_pred - int(self.predicted_hit.sum()))


def match_lesions(pred: np.ndarray, truth: np.ndarray, min_iou: float = 0.1) -> LesionMatch:
    """A true lesion is *detected* when some predicted lesion overlaps it with IoU >= ``min_iou``;
    a predicted lesion with IoU < ``min_iou`` against every true lesion is a false positive."""
    from scipy import ndimage

    structure = np.ones((3, 3, 3), bool)
    tl, nt = ndimage.label(np.asarray(truth, bool), structure)
    pl, npred = ndimage.label(np.asarray(pred, bool), structure)
    t_size = np.bincount(tl.ravel(), minlength=nt + 1)
    p_size = np.bincount(pl.ravel(), minlength=npred + 1)
    t_hit, p_hit = np.zeros(nt + 1, bool), np.zeros(npred + 1, bool)
    both = (tl > 0) & (pl > 0)
    if both.any():
        pairs, inter = np.unique(np.stack([tl[both], pl[both]]), axis=1, return_counts=True)
        iou = inter / (t_size[pairs[0]] + p_size[pairs[1]] - inter)
        hit = iou >= min_iou
        t_hit[pairs[0][hit]] = True
        p_hit[pairs[1][hit]] = True
    return LesionMatch(t_size[1:], t_hit[1:], p_size[1:], p_hit[1:])


def lesion_detection(pred: np.ndarray, truth: np.ndarray, min_iou: float = 0.1) -> LesionDetection:
    """Lesion-wise detection counts (see :func:`match_lesions`)."""
    return match_lesions(pred, truth, min_iou).detection()


@dataclass(frozen=True)
class PairedComparison:
    """A method against a baseline on the same seeds (or studies): is it better, and how sure is that?

    ``wins`` counts pairs where the method is strictly better; ties count for neither. The p-values
    are one-sided (H1: the method is better): an exact sign test over the untied pairs, and a paired
    t-test (None with fewer than 2 pairs or no spread). Neither is corrected for multiple comparisons.
    """

    n: int
    wins: int
    ties: int
    mean_difference: float  # method - baseline, signed so that > 0 means better
    std_difference: float
    sign_test_p: float
    t_test_p: float | None

    def text(self, digits: int = 3) -> str:
        t = "n/a" if self.t_test_p is None else f"{self.t_test_p:.2g}"
        ties = f", {self.ties} tied" if self.ties else ""
        return (f"{self.mean_difference:+.{digits}f} ± {self.std_difference:.{digits}f}, {self.wins}/{self.n}{ties} "
                f"(sign p={self.sign_test_p:.2g}, t p={t})")


def paired_comparison(method, baseline, higher_is_better: bool = True) -> PairedComparison:
    """Compare paired values (same seed or study at the same index); pairs with a None are skipped."""
    from scipy import stats

    if len(method) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(method)} and {len(baseline)}")
    pairs = [(float(m), float(b)) for m, b in zip(method, baseline) if m is not None and b is not None]
    if not pairs:
        raise ValueError("no complete pair to compare")
    sign = 1.0 if higher_is_better else -1.0
    diff = np.array([sign * (m - b) for m, b in pairs])
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    untied = wins + losses
    sign_p = 1.0 if untied == 0 else float(stats.binomtest(wins, untied, 0.5, alternative="greater").pvalue)
    t_p = None
    if len(diff) >= 2 and np.ptp(diff) > 1e-12:  # equal differences (up to rounding): t is undefined
        t_p = float(stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue)
    return PairedComparison(n=len(pairs), wins=wins, ties=len(pairs) - untied, mean_difference=float(diff.mean()),
                            std_difference=float(diff.std()), sign_test_p=sign_p, t_test_p=t_p)
