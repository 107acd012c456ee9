"""Train tasks ``organ`` and ``lesion``: the core recipe fed from the datastore's final labels."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from radcascade.classifier import ClassifierConfig
from radcascade.distributed import spawn
from radcascade.classifier_training import classifier_on_rank, train_classifier_from_cases
from radcascade.labels import LabelContract
from radcascade.patches import PatchConfig
from radcascade.serving.errors import as_http_errors
from radcascade.serving.options import ClassifierTrainOptions, StageTrainOptions, TaskOptions, training_processes
from radcascade.serving.slicer_view import TrainerState
from radcascade.tracking import tracker_for
from radcascade.training import TrainConfig, Trainer, TrainingCase, train_on_rank

logger = logging.getLogger(__name__)


class _DatastoreTrainTask(TrainTask):
    """Reads the datastore's final labels (with their label-name mapping) and keeps train_stats."""

    metric_name = "validation Dice"

    def __init__(self, description: str, contract: LabelContract, model_path: Path, defaults: TaskOptions,
                 tracking_uri: str | None = None):
        super().__init__(description)
        self.contract = contract
        self.model_path = Path(model_path)
        self.stats_path = self.model_path.with_suffix(".stats.json")
        self.defaults = defaults
        self.tracking_uri = tracking_uri  # MLflow store every run is recorded in (None: not recorded)
        self._stats_cache: tuple[tuple, float, Dict[str, Any]] | None = None  # (file stamp, mtime, stats)

    def config(self) -> Dict[str, Any]:
        return self.defaults.config()

    def stats(self) -> Dict[str, Any]:
        return self._read_stats()[1]

    def state(self, name: str) -> TrainerState:
        """Statistics and the time they were written, for the Slicer-facing ``train_stats``."""
        updated, stats = self._read_stats()
        return TrainerState(name, stats, updated, self.metric_name)

    def _read_stats(self) -> tuple[float, Dict[str, Any]]:
        """``(mtime, stats)``; the file is parsed again only when it changed (``/info`` is polled)."""
        try:
            st = self.stats_path.stat()
        except FileNotFoundError:
            return 0.0, {}
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._stats_cache
        if cached is None or cached[0] != stamp:
            try:
                stats = json.loads(self.stats_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return st.st_mtime, {}  # being replaced right now: not cached
            cached = (stamp, st.st_mtime, stats if isinstance(stats, dict) else {})
            self._stats_cache = cached
        return cached[1], dict(cached[2])

    def options(self, request):
        """The typed defaults overridden by the request (a clear 422 for a value that does not parse)."""
        return self.defaults.parse(request)

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

    def __init__(self, contract: LabelContract, model_path: Path, defaults: ClassifierTrainOptions, patch: PatchConfig,
                 allow_download: bool, tracking_uri: str | None = None):
        super().__init__("Train the lesion classifier (radiomics, deep features, layer-wise fine-tuning, scratch, "
                         "or auto: chosen by study-level cross-validation)",
                         contract, model_path, defaults, tracking_uri)
        self.patch = patch
        self.allow_download = allow_download

    def __call__(self, request, datastore: Datastore):
        opts: ClassifierTrainOptions = self.options(request)
        cfg = ClassifierConfig(
            mode=opts.mode,
            backbone=opts.backbone,
            weights=opts.weights or None,
            depth=opts.depth_blocks,
            classical=opts.classical,
            epochs=opts.max_epochs,
            learning_rate=opts.learning_rate,
            val_fraction=opts.val_split,
            seed=opts.seed,
            allow_download=self.allow_download,
        )
        tracker = tracker_for(self.tracking_uri)
        tracker.start("classifier", asdict(opts))
        cases = self.cases(datastore)
        world = training_processes(opts.multi_gpu, opts.cpu_processes)
        logger.info("training the classifier on %d labelled studies (%d process%s)", len(cases), world,
                    "es" if world > 1 else "")
        try:
            with as_http_errors():
                if world > 1:
                    spawn(world, classifier_on_rank, cases, self.contract, cfg, self.patch, self.model_path,
                          self.stats_path)
                    out = self.stats()
                else:
                    out = train_classifier_from_cases(cases, self.contract, cfg, self.patch, self.model_path,
                                                      self.stats_path).to_json()
        except BaseException:
            tracker.finish("FAILED", {}, None)
            raise
        tracker.finish(out.get("status", "DONE"), {k: out.get(k) for k in ("best_metric", "val_auc", "val_accuracy")
                                                  if isinstance(out.get(k), (int, float))}, self.model_path)
        return out


class StageTrainTask(_DatastoreTrainTask):
    """Retrains one cascade stage from the corrected labels and publishes the best model atomically."""

    def __init__(self, stage: str, contract: LabelContract, model_path: Path, defaults: StageTrainOptions,
                 tracking_uri: str | None = None):
        super().__init__(f"Train the {stage} stage of the cascade from the datastore's final labels",
                         contract, model_path, defaults, tracking_uri)
        self.stage = stage

    def __call__(self, request, datastore: Datastore):
        opts: StageTrainOptions = self.options(request)
        cfg = TrainConfig(
            stage=self.stage,
            max_epochs=opts.max_epochs,
            learning_rate=opts.learning_rate,
            val_fraction=opts.val_split,
            warm_start=opts.warm_start,
            max_minutes=opts.max_minutes or None,
            amp=opts.amp,
            seed=opts.seed,
        )
        cases = self.cases(datastore)
        world = training_processes(opts.multi_gpu, opts.cpu_processes)
        logger.info("training %s on %d labelled studies (%d process%s)", self.stage, len(cases), world,
                    "es" if world > 1 else "")
        if world > 1:
            spawn(world, train_on_rank, cfg, self.contract, self.model_path, self.stats_path, cases, self.tracking_uri)
            return self.stats()
        result = Trainer(cfg, self.contract, self.model_path, self.stats_path, tracking_uri=self.tracking_uri).fit(cases)
        return result.to_json()
