"""Training in a configured mode: one fixed family, or ``auto``'s choice among candidates by
study-level cross-validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from radcascade.backbones import Backbone, load_backbone
from radcascade.classifier.config import ClassifierConfig
from radcascade.classifier.fitting import (FitReport, evaluate_samples, fit_deep_features, fit_radiomics, schedule_for,
                                          train_network)
from radcascade.classifier.nets import LesionClassifierNet
from radcascade.classifier.samples import LesionSample, split_by_study
from radcascade.model_selection import Candidate, CandidateScore, cross_validate, default_candidates

def default_depths(n_blocks: int) -> tuple[int, ...]:
    return tuple(sorted({0, 1, 2, 3, min(5, n_blocks), n_blocks}))


@dataclass
class TrainedClassifier:
    net: nn.Module  # LesionClassifierNet (CNN modes) or RadiomicsNet (radiomics modes)
    report: FitReport
    config: ClassifierConfig


def _fit_family(family: str, depth: int | None, train: Sequence[LesionSample], val: Sequence[LesionSample],
                n_classes: int, cfg: ClassifierConfig, device: torch.device,
                progress: Callable[[str], None] | None) -> TrainedClassifier:
    """One fixed mode (family, and depth for fine-tuning) trained on ``train``, early-stopped on ``val``."""
    def backbone(weights) -> Backbone:
        torch.manual_seed(cfg.seed)
        return load_backbone(cfg.backbone, weights, cfg.allow_download)

    train, val = list(train), list(val)
    if family == "radiomics":
        net, report = fit_radiomics(train, val, n_classes, cfg, device)
    elif family == "radiomics+features":
        net, report = fit_radiomics(train, val, n_classes, cfg, device, backbone(cfg.weights))
    elif family == "features":
        net, report = fit_deep_features(LesionClassifierNet(backbone(cfg.weights), n_classes, cfg.dropout), train, val, n_classes, cfg, device)
    elif family == "scratch":
        net = LesionClassifierNet(backbone(None), n_classes, cfg.dropout)
        net, report = train_network(net, net.n_blocks, train, val, n_classes, cfg, device, progress,
                                    schedule_for(cfg, scratch=True))
        report.mode = report.family = "scratch"
    elif family == "finetune":
        net = LesionClassifierNet(backbone(cfg.weights), n_classes, cfg.dropout)
        net, report = train_network(net, net.n_blocks if depth is None else depth, train, val, n_classes, cfg,
                                    device, progress)
    else:
        raise ValueError(f"unknown classifier family '{family}'")
    return TrainedClassifier(net, report, cfg)


def n_backbone_blocks(cfg: ClassifierConfig) -> int:
    return len(load_backbone(cfg.backbone, None).blocks)


def auto_candidates(cfg: ClassifierConfig) -> list[Candidate]:
    """The candidates ``auto`` compares: the families of ``cfg.auto_families``, fine-tuning at
    ``cfg.auto_depths`` (default 0, 1, 2, 3, 5 and all blocks)."""
    n_blocks = n_backbone_blocks(cfg)
    return default_candidates(cfg.auto_families, cfg.auto_depths or default_depths(n_blocks), n_blocks)


def select_by_cv(samples: Sequence[LesionSample], n_classes: int, cfg: ClassifierConfig,
                 device: torch.device | None = None, progress: Callable[[str], None] | None = None,
                 candidates: Sequence[Candidate] | None = None) -> dict[str, CandidateScore]:
    """Score every candidate by repeated stratified study-level cross-validation on ``samples``
    (training lesions only). Inside a fold, fine-tuning early-stops on a study-level split of the
    fold's training part, never on the fold's test part."""
    device = device or torch.device("cpu")
    candidates = list(candidates or auto_candidates(cfg))

    def fit_and_score(c: Candidate, fold_train, fold_test) -> float | None:
        inner_train, inner_val = (split_by_study(fold_train, cfg.val_fraction, cfg.seed)
                                  if c.family in ("finetune", "scratch") else (fold_train, []))
        trained = _fit_family(c.family, c.depth, inner_train, inner_val, n_classes, cfg, device, None)
        return evaluate_samples(trained.net, fold_test, n_classes, device)[0]

    return cross_validate(candidates, list(samples), [s.label for s in samples], [s.study for s in samples],
                          fit_and_score, cfg.cv_folds, cfg.cv_repeats, cfg.seed, progress)


def train_classifier(train: Sequence[LesionSample], val: Sequence[LesionSample], n_classes: int,
                     cfg: ClassifierConfig, device: torch.device | None = None,
                     progress: Callable[[str], None] | None = None) -> TrainedClassifier:
    """Train in ``cfg.mode`` on ``train``, early-stop / report on ``val`` (lesions of other studies).

    ``auto`` chooses its candidate by cross-validation on ``train + val`` (all training lesions:
    repeated folds rank candidates where one small split cannot), then refits it like a fixed mode."""
    device = device or torch.device("cpu")
    if not train:
        raise ValueError("no lesions to train the classifier on")
    if cfg.mode != "auto":
        return _fit_family(cfg.mode, cfg.depth, train, val, n_classes, cfg, device, progress)
    candidates = auto_candidates(cfg)
    scores = select_by_cv(list(train) + list(val), n_classes, cfg, device, progress, candidates)
    best = max(candidates, key=lambda c: (scores[c.name].mean_auc if scores[c.name].mean_auc is not None else -1.0,
                                          -candidates.index(c)))  # ties: the earlier (simpler) candidate
    if progress:
        progress(f"[classifier auto] chose {best.name} (CV AUC {scores[best.name].mean_auc})")
    trained = _fit_family(best.family, best.depth, train, val, n_classes, cfg, device, progress)
    r = trained.report
    r.mode, r.chosen, r.candidates = "auto", best.name, scores
    r.depth_curve = {c.depth: scores[c.name].mean_auc for c in candidates if c.family == "finetune"}
    return trained
