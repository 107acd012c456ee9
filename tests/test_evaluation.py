"""Evaluation metrics on constructed cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radcascade.evaluation import classification_metrics, dice, lesion_detection, paired_comparison


def test_dice_known_values():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert dice(a, b) == 1.0  # both empty
    a[0, 0, :2] = True
    assert dice(a, b) == 0.0
    b[0, 0, 1:3] = True
    assert dice(a, b) == pytest.approx(2 * 1 / 4)


def test_lesion_detection_counts_hits_misses_and_false_positives():
    truth = np.zeros((20, 20, 20), bool)
    truth[2:5, 2:5, 2:5] = True      # found
    truth[12:15, 12:15, 12:15] = True  # missed
    pred = np.zeros_like(truth)
    pred[2:5, 2:5, 2:4] = True       # IoU 18/27 with the first
    pred[2:4, 15:18, 15:18] = True   # touches nothing: a false positive
    d = lesion_detection(pred, truth)
    assert (d.true_lesions, d.detected, d.predicted_lesions, d.false_positives) == (2, 1, 2, 1)
    assert d.recall == 0.5
    assert (d + d).recall == 0.5 and (d + d).false_positives == 2
    # A sliver overlapping the second lesion below the IoU threshold detects nothing and is a false positive.
    sliver = np.zeros_like(truth)
    sliver[12, 12, 12] = True
    s = lesion_detection(sliver, truth, min_iou=0.1)
    assert (s.detected, s.false_positives) == (0, 1)


def test_classification_metrics_perfect_and_single_class():
    m = classification_metrics([0, 1, 1, 0], [[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]], 2)
    assert (m.n, m.accuracy, m.auc) == (4, 1.0, 1.0)
    single = classification_metrics([1, 1], [[0.2, 0.8], [0.6, 0.4]], 2)
    assert single.auc is None and single.accuracy == 0.5


def test_paired_comparison_sign_and_t_test():
    baseline = [0.40, 0.35, 0.50, 0.30, 0.45, 0.41, 0.38, 0.36, 0.44, 0.39]
    method = [b + 0.05 for b in baseline[:9]] + [baseline[9] - 0.02]  # better on 9 of 10
    c = paired_comparison(method, baseline)
    assert (c.n, c.wins, c.ties) == (10, 9, 0)
    # Exact one-sided sign test: P(X >= 9), X ~ Binomial(10, 1/2) = 11/1024.
    assert c.sign_test_p == pytest.approx(11 / 1024)
    assert c.mean_difference == pytest.approx((9 * 0.05 - 0.02) / 10)
    assert c.t_test_p is not None and c.t_test_p < 0.01
    assert "9/10" in c.text()


def test_paired_comparison_lower_is_better_ties_and_missing_values():
    # False positives per study: lower is better; a tie counts for neither; a None pair is skipped.
    c = paired_comparison([1.0, 2.0, 3.0, None], [2.0, 2.0, 4.0, 1.0], higher_is_better=False)
    assert (c.n, c.wins, c.ties) == (3, 2, 1)
    assert c.mean_difference == pytest.approx(2 / 3)
    assert c.sign_test_p == pytest.approx(0.25)  # 2 of 2 untied pairs: 1/4
    worse = paired_comparison([0.1, 0.2, 0.3], [0.2, 0.3, 0.4])
    assert worse.wins == 0 and worse.sign_test_p == 1.0 and worse.t_test_p is None  # no spread in the differences
    all_tied = paired_comparison([0.5, 0.5], [0.5, 0.5])
    assert all_tied.sign_test_p == 1.0 and all_tied.t_test_p is None and math.isclose(all_tied.mean_difference, 0)


def test_paired_comparison_refuses_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_comparison([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="no complete pair"):
        paired_comparison([None], [0.3])
