"""Choosing a classifier family on training data only: repeated stratified study-level CV.

One small validation split cannot rank candidates whose AUCs differ by a few hundredths (a split
of 20 lesions moves AUC by ~0.1), so every candidate is scored on ``folds`` study-level folds,
``repeats`` times with other shuffles, and compared on the mean of its fold AUCs. Folds keep every
study's lesions together and both classes in each fold where the studies allow it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """A classifier family, with the depth (blocks trained from the top) for fine-tuning."""

    family: str  # radiomics | features | radiomics+features | finetune | scratch
    depth: int | None = None

    @property
    def name(self) -> str:
        return self.family if self.depth is None else f"{self.family} k={self.depth}"


@dataclass
class CandidateScore:
    """A candidate's cross-validation result: one AUC per fold (None when a fold held one class)."""

    name: str
    fold_aucs: list[float | None]
    seconds: float

    @property
    def mean_auc(self) -> float | None:
        v = [a for a in self.fold_aucs if a is not None]
        return float(np.mean(v)) if v else None

    @property
    def std_auc(self) -> float | None:
        v = [a for a in self.fold_aucs if a is not None]
        return float(np.std(v)) if v else None

    def to_json(self) -> dict:
        return {"mean_auc": self.mean_auc, "std_auc": self.std_auc, "fold_aucs": self.fold_aucs,
                "seconds": round(self.seconds, 1)}


def default_candidates(families: Sequence[str], depths: Sequence[int], n_blocks: int) -> list[Candidate]:
    """Candidates in order of cost (ties go to the earlier one): the feature families, then
    fine-tuning from the head only down to every block (``depths`` clipped to ``n_blocks``)."""
    out = [Candidate(f) for f in families if f != "finetune"]
    if "finetune" in families:
        out += [Candidate("finetune", d) for d in sorted({min(max(0, d), n_blocks) for d in depths})]
    return out


def study_folds(labels: Sequence[int], groups: Sequence[str], folds: int, repeats: int,
                seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, test indices) of ``repeats`` x stratified group k-fold splits."""
    from sklearn.model_selection import StratifiedGroupKFold

    y, g = np.asarray(labels), np.asarray(groups)
    k = min(folds, len(set(g.tolist())))
    if k < 2:
        raise ValueError("cross-validation needs lesions from at least two studies")
    out = []
    for r in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + 1000 * r)
        out.extend((tr, te) for tr, te in splitter.split(np.zeros(len(y)), y, g))
    return out


def cross_validate(candidates: Sequence[Candidate], samples: Sequence, labels: Sequence[int], groups: Sequence[str],
                   fit_and_score: Callable[[Candidate, list, list], float | None], folds: int, repeats: int,
                   seed: int, progress: Callable[[str], None] | None = None) -> dict[str, CandidateScore]:
    """Every candidate on the same folds: ``fit_and_score(candidate, train, test)`` -> test AUC."""
    splits = study_folds(labels, groups, folds, repeats, seed)
    scores: dict[str, CandidateScore] = {}
    for c in candidates:
        t0 = time.time()
        aucs = []
        for tr, te in splits:
            test = [samples[i] for i in te]
            if len({labels[i] for i in te}) < 2 or len({labels[i] for i in tr}) < 2:
                aucs.append(None)  # AUC undefined (or nothing to learn): the fold does not count
                continue
            aucs.append(fit_and_score(c, [samples[i] for i in tr], test))
        scores[c.name] = CandidateScore(c.name, aucs, time.time() - t0)
        if progress:
            progress(f"[classifier auto] {c.name}: CV AUC {scores[c.name].mean_auc} over {len(splits)} folds")
    return scores
