"""Train tasks ``organ`` and ``lesion``: the core recipe fed from the datastore's final labels."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from radcascade.backbones import BACKBONES
from radcascade.classifier import CLASSICAL, MODES, ClassifierConfig
from radcascade.classifier_training import train_classifier_from_cases
from radcascade.labels import LabelContract
from radcascade.patches import PatchConfig
from radcascade.serving.errors import as_http_errors
from radcascade.serving.slicer_view import TrainerState, first_of, options_with_choices
from radcascade.training import TrainConfig, Trainer, TrainingCase

logger = logging.getLogger(__name__)


def _bool(v) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")


class _DatastoreTrainTask(TrainTask):
    """Reads the datastore's final labels (with their label-name mapping) and keeps train_stats."""

    metric_name = "validation Dice"
    #: option -> allowed values, shown as a drop-down in Slicer's Options (default first)
    choices: Dict[str, list] = {}

    def __init__(self, description: str, contract: LabelContract, model_path: Path, defaults: Dict[str, Any]):
        super().__init__(description)
        self.contract = contract
        self.model_path = Path(model_path)
        self.stats_path = self.model_path.with_suffix(".stats.json")
        self.defaults = dict(defaults)

    def config(self) -> Dict[str, Any]:
        return options_with_choices(self.defaults, self.choices)

    def stats(self) -> Dict[str, Any]:
        try:
            stats = json.loads(self.stats_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return stats if isinstance(stats, dict) else {}

    def state(self, name: str) -> TrainerState:
        """Statistics and the time they were written, for the Slicer-facing ``train_stats``."""
        try:
            updated = self.stats_path.stat().st_mtime
        except FileNotFoundError:
            updated = 0.0
        return TrainerState(name, self.stats(), updated, self.metric_name)

    def options(self, request) -> Dict[str, Any]:
        """Defaults overridden by the request; Slicer sends a list option's first item, others may
        send the list itself; an empty text field means "the default"."""
        given = {k: first_of(v) for k, v in request.items() if k in self.defaults}
        return {**self.defaults, **{k: v for k, v in given.items() if v not in (None, "")}}

    def cases(self, datastore: Datastore) -> list[TrainingCase]:
        tag = DefaultLabelTag.FINAL.value
        out = []
        for image_id in sorted(datastore.get_labeled_images(tag)):
            info = datastore.get_label_info(image_id, tag) or {}
            label_info = info.get("label_info")
            out.append(
                TrainingCase(
                    name=image_id,
                    image=Path(datastore.get_image_uri(image_id)),
                    label=Path(datastore.get_label_uri(image_id, tag)),
                    label_info=tuple(label_info) if label_info else None,
                )
            )
        return out


class ClassifierTrainTask(_DatastoreTrainTask):
    """Retrains the lesion classifier: ``mode`` scratch / features / finetune / auto (Slicer option)."""

    metric_name = "validation ROC AUC"
    choices = {"mode": list(MODES), "backbone": list(BACKBONES), "classical": list(CLASSICAL)}

    def __init__(self, contract: LabelContract, model_path: Path, defaults: Dict[str, Any], patch: PatchConfig,
                 allow_download: bool):
        super().__init__("Train the lesion classifier (scratch, deep features, layer-wise fine-tuning or auto)",
                         contract, model_path, defaults)
        self.patch = patch
        self.allow_download = allow_download

    def __call__(self, request, datastore: Datastore):
        opts = self.options(request)
        depth = opts.get("depth")
        cfg = ClassifierConfig(
            mode=str(opts["mode"]),
            backbone=str(opts["backbone"]),
            weights=str(opts["weights"]) if opts.get("weights") else None,
            depth=None if depth in (None, "", "all", -1) else int(depth),
            classical=str(opts["classical"]),
            epochs=int(opts["max_epochs"]),
            learning_rate=float(opts["learning_rate"]),
            val_fraction=float(opts["val_split"]),
            seed=int(opts["seed"]),
            allow_download=self.allow_download,
        )
        with as_http_errors():
            result = train_classifier_from_cases(self.cases(datastore), self.contract, cfg, self.patch,
                                                 self.model_path, self.stats_path)
        return result.to_json()


class StageTrainTask(_DatastoreTrainTask):
    """Retrains one cascade stage from the corrected labels and publishes the best model atomically."""

    def __init__(self, stage: str, contract: LabelContract, model_path: Path, defaults: Dict[str, Any]):
        super().__init__(f"Train the {stage} stage of the cascade from the datastore's final labels",
                         contract, model_path, defaults)
        self.stage = stage

    def __call__(self, request, datastore: Datastore):
        opts = self.options(request)
        cfg = TrainConfig(
            stage=self.stage,
            max_epochs=int(opts["max_epochs"]),
            learning_rate=float(opts["learning_rate"]),
            val_fraction=float(opts["val_split"]),
            warm_start=_bool(opts["warm_start"]),
            max_minutes=float(opts["max_minutes"]) or None,
            amp=_bool(opts["amp"]),
            seed=int(opts["seed"]),
        )
        cases = self.cases(datastore)
        logger.info("training %s on %d labelled studies", self.stage, len(cases))
        result = Trainer(cfg, self.contract, self.model_path, self.stats_path).fit(cases)
        return result.to_json()
