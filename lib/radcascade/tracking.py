"""Training runs recorded where MONAI Label users look for them: MLflow.

Every run of a trainer (organ, lesion, classifier) is one MLflow run in the experiment
``radcascade-<trainer>``: its options as parameters, per epoch the training loss, the validation
metric and the learning rate, and at the end its status, best metric and the digest of the model
file it published (the same digest ``/infer`` answers carry in ``models``).  The server keeps them in
a local SQLite store beside its models (``<model_dir>/tracking/mlflow.db``); view them with::

    .venv/bin/mlflow ui --backend-store-uri sqlite:///apps/radcascade/model/tracking/mlflow.db

MLflow is imported only when a run is tracked (it takes seconds to import).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping, Protocol

logger = logging.getLogger(__name__)


def default_tracking_uri(model_dir: Path) -> str:
    return f"sqlite:///{(Path(model_dir) / 'tracking' / 'mlflow.db').resolve()}"


def file_digest(path: Path) -> str:
    """The published file's digest, as ``/infer`` reports it (sha256, first 16 hex digits)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class Tracker(Protocol):
    def start(self, trainer: str, params: Mapping[str, Any]) -> None: ...

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None: ...

    def finish(self, status: str, metrics: Mapping[str, float | None], model_path: Path | None) -> None: ...


class MlflowTracker:
    """One MLflow run per training run, through the client API (no process-wide active run)."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client = None
        self._run_id: str | None = None

    def start(self, trainer: str, params: Mapping[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(self.uri)
        name = f"radcascade-{trainer}"
        experiment = self._client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(name)
        run = self._client.create_run(experiment_id, run_name=trainer, tags={"trainer": trainer})
        self._run_id = run.info.run_id
        for key, value in params.items():
            self._client.log_param(self._run_id, key, str(value)[:500])

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        for key, value in metrics.items():
            if value is not None:
                self._client.log_metric(self._run_id, key, float(value), step=epoch)

    def finish(self, status: str, metrics: Mapping[str, float | None], model_path: Path | None) -> None:
        if self._run_id is None:
            return
        for key, value in metrics.items():
            if value is not None:
                self._client.log_metric(self._run_id, key, float(value))
        if model_path is not None and Path(model_path).exists():
            self._client.set_tag(self._run_id, "model_digest", file_digest(model_path))
            self._client.set_tag(self._run_id, "model_path", str(model_path))
        self._client.set_terminated(self._run_id, "FINISHED" if status == "DONE" else "FAILED")


class SafeTracker:
    """Tracking never fails a training run: the first error is logged and tracking stops."""

    def __init__(self, inner: Tracker | None):
        self.inner = inner

    def _call(self, method: str, *args) -> None:
        if self.inner is None:
            return
        try:
            getattr(self.inner, method)(*args)
        except Exception as e:  # noqa: BLE001 - a tracking store problem must not cost the model
            logger.warning("training tracking stopped (%s): %s", method, e)
            self.inner = None

    def start(self, trainer: str, params: Mapping[str, Any]) -> None:
        self._call("start", trainer, params)

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        self._call("epoch", epoch, metrics)

    def finish(self, status: str, metrics: Mapping[str, float | None], model_path: Path | None) -> None:
        self._call("finish", status, metrics, model_path)


def tracker_for(uri: str | None) -> SafeTracker:
    """A tracker for ``uri`` (None, "" or "off": one that records nothing)."""
    return SafeTracker(MlflowTracker(uri) if uri and uri != "off" else None)
