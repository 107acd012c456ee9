"""Which unlabelled study to annotate next: one ranking used by the server and the benchmark.

A study's *value* is one stored uncertainty (``epistemic``, ``tta``, ``classifier``) or
``combined``, their weighted mean (:data:`DEFAULT_WEIGHTS`). Studies are ranked by value, highest
first, equal values in random order; studies never scored come after the scored ones, in random
order.

**Diversity** (optional, :class:`Diversity`): near-identical studies should not be handed out one
after another. Each scored study has a cheap *descriptor* (:func:`descriptor`): the intensity
histogram inside its predicted organ plus its three uncertainty scores. The ranking is then built
greedily: at each step the candidate with the highest

    value - penalty * closeness,   closeness = max(0, 1 - distance / radius)

is taken, where ``distance`` is the Euclidean distance of descriptors to the nearest study already
in the ranking *or served recently* (the server passes those as ``references``). ``penalty = 0``
is the pure ranking. The greedy pass costs O(k * n) small vector distances for the first ``k``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

SCORES = ("epistemic", "tta", "classifier")
DEFAULT_WEIGHTS: dict[str, float] = {"epistemic": 1.0, "tta": 1.0, "classifier": 0.5}
STRATEGY_SCORES = ("combined", *SCORES)


@dataclass(frozen=True)
class Diversity:
    """Penalty for studies close (in :func:`descriptor` space) to ones ranked above or served recently."""

    penalty: float = 0.0  # 0 = off: pure ranking by value
    radius: float = 0.3  # descriptor distance at which two studies stop counting as similar

    def __post_init__(self) -> None:
        if self.penalty < 0 or self.radius <= 0:
            raise ValueError("diversity penalty must be >= 0 and radius > 0")

    @property
    def enabled(self) -> bool:
        return self.penalty > 0


# What the server's ``combined`` strategy uses unless configured otherwise (``--conf al_diversity``):
# off. A penalty of 0.5 (radius 0.1) was the default until two simulated annotation loops
# (benchmarks/results/active_learning*.md) showed it no better, if anything worse, than none.
DEFAULT_DIVERSITY = Diversity(penalty=0.0, radius=0.1)
# The setting those benchmarks call ``combined`` (``combined-nodiv`` is the default above).
BENCHMARKED_DIVERSITY = Diversity(penalty=0.5, radius=0.1)


@dataclass
class Candidate:
    """An unlabelled study as the ranking sees it."""

    id: str
    value: float | None  # None: never scored
    descriptor: np.ndarray | None = None


STAGED = ("epistemic", "tta")  # scores also stored per cascade stage (``<score>_organ``, ``<score>_lesion``)


def stage_value(uncertainty: Mapping, score: str, lesion_weight: float | None = None) -> float:
    """``epistemic`` or ``tta`` with the lesion stage weighted ``lesion_weight`` and the organ stage the
    rest; the stored value (the scorer's own weighting) when ``lesion_weight`` is None or the record
    predates per-stage values."""
    if lesion_weight is None or f"{score}_lesion" not in uncertainty:
        return float(uncertainty[score])
    return (1.0 - lesion_weight) * float(uncertainty[f"{score}_organ"]) + lesion_weight * float(uncertainty[f"{score}_lesion"])


def score_value(uncertainty: Mapping | None, score: str, weights: Mapping[str, float] | None = None,
                lesion_weight: float | None = None) -> float | None:
    """The value of a stored uncertainty record for ``score`` (one of :data:`STRATEGY_SCORES`);
    ``lesion_weight`` re-weighs the stages of ``epistemic`` and ``tta`` (see :func:`stage_value`)."""
    if not uncertainty:
        return None
    if lesion_weight is not None and not 0.0 <= lesion_weight <= 1.0:
        raise ValueError("lesion_weight must be in [0, 1]")

    def value(key: str) -> float:
        return stage_value(uncertainty, key, lesion_weight) if key in STAGED else float(uncertainty[key])

    if score != "combined":
        return value(score)
    weights = weights or DEFAULT_WEIGHTS
    return sum(w * value(k) for k, w in weights.items()) / sum(weights.values())


def descriptor(uncertainty: Mapping | None) -> np.ndarray | None:
    """Organ intensity histogram (fractions) + the three scores, from a stored uncertainty record."""
    if not uncertainty or "histogram" not in uncertainty:
        return None
    hist = [float(h) for h in uncertainty["histogram"]]
    return np.asarray(hist + [float(uncertainty[k]) for k in SCORES], dtype=np.float64)


def _closeness(d: np.ndarray | None, refs: list[np.ndarray], radius: float) -> float:
    """1 for a duplicate of a reference, falling linearly to 0 at ``radius``."""
    dists = [float(np.linalg.norm(d - r)) for r in refs if d is not None and r.shape == d.shape]
    return max(0.0, 1.0 - min(dists) / radius) if dists else 0.0


def rank(candidates: Sequence[Candidate], rng: random.Random, diversity: Diversity | None = None,
         references: Sequence[np.ndarray] = (), limit: int | None = None) -> list[Candidate]:
    """Candidates in the order they should be annotated (see the module docstring).

    ``limit`` stops the (greedy) ranking after that many; ``references`` are descriptors of studies
    served recently. Deterministic for a given ``rng`` state.
    """
    # Equal values (e.g. classifier uncertainty 0 for every study without a detected lesion) are
    # ordered at random, not by name: otherwise such a strategy quietly degenerates into `first`.
    draw = {c.id: rng.random() for c in sorted(candidates, key=lambda c: c.id)}
    scored = sorted((c for c in candidates if c.value is not None), key=lambda c: (-c.value, draw[c.id]))
    unscored = sorted((c for c in candidates if c.value is None), key=lambda c: draw[c.id])
    limit = len(candidates) if limit is None else min(limit, len(candidates))
    if diversity is None or not diversity.enabled:
        return (scored + unscored)[:limit]
    refs = [np.asarray(r, dtype=np.float64) for r in references]
    ranked: list[Candidate] = []
    pool = list(scored)
    while pool and len(ranked) < limit:
        adjusted = [c.value - diversity.penalty * _closeness(c.descriptor, refs, diversity.radius) for c in pool]
        best = pool.pop(int(np.argmax(adjusted)))  # first of equals: ties keep the value order
        ranked.append(best)
        if best.descriptor is not None:
            refs.append(best.descriptor)
    return (ranked + unscored)[:limit]


def pick(candidates: Sequence[Candidate], rng: random.Random, top_k: int = 1, diversity: Diversity | None = None,
         references: Sequence[np.ndarray] = ()) -> Candidate | None:
    """One study for one client: at random among the first ``top_k`` of :func:`rank`."""
    ranked = rank(candidates, rng, diversity, references, limit=max(1, int(top_k)))
    return rng.choice(ranked) if ranked else None
