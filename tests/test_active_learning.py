"""The shared ranking of unlabelled studies: pure ranking, top-k, and the diversity penalty."""

import random

import numpy as np
import pytest

from radcascade.active_learning import Candidate, Diversity, descriptor, pick, rank, score_value


def _record(score: float, hist) -> dict:
    return {"epistemic": score, "tta": score, "classifier": score, "histogram": list(hist)}


@pytest.fixture
def near_duplicates() -> list[Candidate]:
    """Four near-identical, very uncertain studies and two different, less uncertain ones."""
    same = [0.0, 0.1, 0.6, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]
    other = [0.0, 0.0, 0.0, 0.1, 0.3, 0.5, 0.1, 0.0, 0.0]
    third = [0.3, 0.3, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]
    records = {f"dup{i}": _record(0.90 - 0.01 * i, np.add(same, 0.002 * i)) for i in range(4)}
    records["other"] = _record(0.70, other)
    records["third"] = _record(0.65, third)
    return [Candidate(k, score_value(r, "combined"), descriptor(r)) for k, r in records.items()]


def test_without_diversity_the_ranking_is_by_value(near_duplicates):
    ranked = rank(near_duplicates, random.Random(0))
    assert [c.id for c in ranked] == ["dup0", "dup1", "dup2", "dup3", "other", "third"]
    assert [c.id for c in rank(near_duplicates, random.Random(0), Diversity(penalty=0.0))][:3] == ["dup0", "dup1", "dup2"]


def test_diversity_keeps_duplicates_out_of_the_top_k(near_duplicates):
    ranked = rank(near_duplicates, random.Random(0), Diversity(penalty=1.0, radius=0.3), limit=3)
    assert [c.id for c in ranked] == ["dup0", "other", "third"]
    # deterministic
    assert ranked == rank(near_duplicates, random.Random(5), Diversity(penalty=1.0, radius=0.3), limit=3)


def test_recently_served_study_pushes_its_duplicates_down(near_duplicates):
    served = near_duplicates[0].descriptor
    first = pick(near_duplicates[1:], random.Random(0), top_k=1, diversity=Diversity(penalty=1.0), references=[served])
    assert first.id == "other"
    assert pick(near_duplicates[1:], random.Random(0), top_k=1, references=[served]).id == "dup1"  # off: ignored


def test_unscored_rank_last_and_top_k_spreads():
    cands = [Candidate("a", 0.9), Candidate("b", 0.5), Candidate("u1", None), Candidate("u2", None)]
    ranked = rank(cands, random.Random(0))
    assert [c.id for c in ranked[:2]] == ["a", "b"] and {c.id for c in ranked[2:]} == {"u1", "u2"}
    rng = random.Random(1)
    assert {pick(cands, rng, top_k=2).id for _ in range(40)} == {"a", "b"}
    assert pick([], rng) is None


def test_equal_values_are_ordered_at_random_not_by_name():
    """Ties (e.g. no lesion detected anywhere: classifier uncertainty 0) must not degenerate into `first`."""
    cands = [Candidate("best", 0.9)] + [Candidate(f"zero{i}", 0.0) for i in range(6)]
    orders = {tuple(c.id for c in rank(cands, random.Random(seed))) for seed in range(20)}
    assert all(order[0] == "best" for order in orders)
    assert len({order[1] for order in orders}) > 2  # not always zero0
    assert rank(cands, random.Random(3)) == rank(list(reversed(cands)), random.Random(3))  # input order is irrelevant


def test_lesion_weight_reweighs_the_stages():
    staged = {"epistemic": 0.3, "epistemic_organ": 0.5, "epistemic_lesion": 0.1,
              "tta": 0.2, "tta_organ": 0.3, "tta_lesion": 0.1, "classifier": 0.6}
    assert score_value(staged, "epistemic") == 0.3  # the stored weighting
    assert score_value(staged, "epistemic", lesion_weight=1.0) == pytest.approx(0.1)
    assert score_value(staged, "tta", lesion_weight=0.25) == pytest.approx(0.75 * 0.3 + 0.25 * 0.1)
    assert score_value(staged, "classifier", lesion_weight=1.0) == 0.6  # one stage only
    assert score_value(staged, "combined", lesion_weight=1.0) == pytest.approx((0.1 + 0.1 + 0.5 * 0.6) / 2.5)
    old = {"epistemic": 0.2, "tta": 0.4, "classifier": 0.8}  # scored before per-stage values were stored
    assert score_value(old, "epistemic", lesion_weight=1.0) == 0.2
    with pytest.raises(ValueError):
        score_value(staged, "epistemic", lesion_weight=1.5)


def test_score_values_and_descriptor():
    r = {"epistemic": 0.2, "tta": 0.4, "classifier": 0.8}
    assert score_value(r, "tta") == 0.4
    assert score_value(r, "combined") == pytest.approx((0.2 + 0.4 + 0.4) / 2.5)
    assert score_value(None, "combined") is None
    assert descriptor(r) is None  # scored before histograms were stored: no diversity, still ranked
    assert descriptor({**r, "histogram": [0.5, 0.5]}).tolist() == [0.5, 0.5, 0.2, 0.4, 0.8]
    with pytest.raises(ValueError):
        Diversity(penalty=-1)
