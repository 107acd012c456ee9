"""A replay of what 3D Slicer's MONAI Label module does with the server, call for call.

3D Slicer cannot be installed here, so this reproduces, from the module's source
(``plugins/slicer/MONAILabel/MONAILabel.py`` in Project-MONAI/MONAILabel, 0.8.5), every step that
touches the server's answers, with the same client class (``MONAILabelClient``) and the same
arithmetic.  Each step fails loudly where the module would raise or show the user something wrong:

* ``update_gui``: ``updateGUIFromParameterNode`` - the first ``train_stats`` entry's ``best_metric``
  goes through ``updateAccuracyBar`` (``dice * 100``, ``dice > 0.5``, ``f"{dice:.4f}"``);
  strategies and trainers are listed; a top-level ``config`` makes the module refuse the server;
* ``options``: ``updateConfigTable`` / ``invalidateConfigTable`` / ``getParamsFromConfig`` - list
  values become drop-downs of strings (first item sent), ``int``/``float`` defaults are parsed back
  from the text the table shows;
* ``monitor_training``: ``monitorTraining`` every poll (``0 if total_time else epoch``);
* ``next_sample`` / ``init_sample``: the ``original`` label is shown when the datastore has one,
  empty segments are made for ``/info`` ``labels``, auto-run runs the first model naming a label;
* ``run_model``: ``onClickSegmentation`` + ``updateSegmentationMask`` - label value *i* replaces the
  segment named *i*-th by value (background dropped); other segments are untouched;
* ``submit``: ``onSaveLabel`` - segments exported in segment order (value = position), later
  segments over earlier ones, ``label_info=[{name, idx}]`` with ``idx`` counted over all segments.

Segments are kept as boolean masks in the image's array order (what ``sitk.GetArrayFromImage`` gives).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
import SimpleITK as sitk
from monailabel.client import MONAILabelClient

# Files Slicer's ioManager loads as volumes by their extension (the ones this server writes)
SLICER_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
HIDDEN_SEGMENTS = ("background", "foreground_scribbles", "background_scribbles")


class ModuleError(AssertionError):
    """Something that would raise inside the Slicer module, or show the user a wrong state."""


def accuracy_bar(dice) -> str:
    """``updateAccuracyBar``: what the module computes from ``best_metric``."""
    try:
        _ = dice * 100
        _ = [dice > t for t in (0.5, 0.6, 0.7, 0.8, 0.9)]
        if dice > 0.5:
            _ = 0.5 / dice
        return f"{dice:.4f}"
    except Exception as e:  # noqa: BLE001 - the module does not catch it either
        raise ModuleError(f"updateAccuracyBar raises on best_metric={dice!r}: {e}") from e


@dataclass
class TrainingView:
    percent: float
    tooltip: str
    accuracy: str
    trainer: str | None


@dataclass
class SlicerModule:
    url: str
    tmpdir: Path
    info: dict = field(default_factory=dict)
    segments: dict[str, np.ndarray] = field(default_factory=dict)  # in segment order
    image_id: str | None = None
    node_name: str | None = None  # the volume node's name in the scene
    image: sitk.Image | None = None
    auto_run: bool = False  # a fresh Slicer profile has the setting off
    remote: bool = False  # Slicer on another machine: the server's "path" does not exist there
    log: list[str] = field(default_factory=list)

    # -- the module's logic class --------------------------------------------------------------
    def client(self) -> MONAILabelClient:
        mc = MONAILabelClient(self.url, str(self.tmpdir))
        if mc.auth_enabled():  # GET /auth/ before every call
            raise ModuleError("the replay expects a server without authentication")
        return mc

    # -- fetchInfo + updateGUIFromParameterNode -------------------------------------------------
    def fetch_info(self) -> dict:
        info = self.client().info()
        if info.get("config"):
            raise ModuleError("a top-level 'config' in /info makes the module ask for a server upgrade")
        self.info = info
        self.update_gui()
        return info

    def update_gui(self, info: dict | None = None) -> str:
        info = info if info is not None else self.info
        seg_models = [k for k, v in info.get("models", {}).items() if v.get("type", "segmentation") in ("segmentation", "detection")]
        if not seg_models:
            raise ModuleError("no segmentation model listed")
        datastore = info.get("datastore", {})
        _ = datastore.get("completed", 0) / max(datastore.get("total", 0), 1) * 100
        train_stats = info.get("train_stats", {})
        first = next(iter(train_stats.values())) if train_stats else train_stats
        accuracy = accuracy_bar(first.get("best_metric", 0))
        if not info.get("strategies"):
            raise ModuleError("no strategy: Next Sample would say 'No Strategy Found/Selected'")
        if not info.get("trainers"):
            raise ModuleError("no trainer: Train would say 'No Model selected'")
        for section in ("models", "trainers", "strategies", "scoring"):
            for name in info.get(section, {}):
                self.options(section, name, info)
        return accuracy

    # -- updateConfigTable / invalidateConfigTable / getParamsFromConfig ------------------------
    def options(self, section: str, name: str, info: dict | None = None, edits: dict | None = None) -> dict:
        info = info if info is not None else self.info
        config = info.get(section, {}).get(name, {}).get("config") or {}
        params = {}
        for key, value in config.items():
            text = (edits or {}).get(key)
            if isinstance(value, (dict, list)):
                items = list(value)
                if not all(isinstance(v, str) for v in items):
                    raise ModuleError(f"{section}/{name}/{key}: a drop-down needs strings, got {items}")
                chosen = text if text is not None else items[0]
                if chosen not in items:
                    raise ModuleError(f"{section}/{name}/{key}: '{chosen}' is not offered")
                params[key] = chosen if isinstance(value, list) else value
            elif isinstance(value, bool):
                params[key] = bool(text) if text is not None else value
            else:
                shown = text if text is not None else (str(value) if value else "")
                try:
                    if isinstance(value, int):
                        params[key] = int(shown) if shown else 0
                    elif isinstance(value, float):
                        params[key] = float(shown) if shown else 0.0
                    else:
                        params[key] = shown
                except ValueError as e:
                    raise ModuleError(f"{section}/{name}/{key}: the table cannot parse '{shown}' back: {e}") from e
        return params

    # -- onNextSampleButton + initSample --------------------------------------------------------
    def next_sample(self, strategy: str) -> dict:
        if strategy not in self.info.get("strategies", {}):
            raise ModuleError(f"strategy '{strategy}' not listed")
        sample = self.client().next_sample(strategy, self.options("strategies", strategy))
        if not sample.get("id"):
            return sample
        self.image_id = sample["id"]
        image_name = sample.get("name", self.image_id)
        if not self.remote and os.path.exists(sample.get("path") or ""):
            self.image = sitk.ReadImage(sample["path"])
        else:  # SampleDataLogic.downloadFromURL(fileNames=image_name, uris=/datastore/image?image=<id>)
            if not image_name.lower().endswith(SLICER_VOLUME_SUFFIXES):
                raise ModuleError(f"Slicer downloads the image as '{image_name}' and finds no reader for it")
            response = requests.get(f"{self.url}/datastore/image", params={"image": self.image_id}, timeout=120)
            if response.status_code != 200:
                raise ModuleError(f"image download answered {response.status_code}")
            path = self.tmpdir / image_name
            path.write_bytes(response.content)
            self.image = sitk.ReadImage(str(path))
        self.node_name = sample.get("PatientID", sample.get("name", self.image_id))
        self.segments = {}
        datastore = self.client().datastore()
        original = datastore["objects"][self.image_id]["labels"].get("original")
        shown_original = False
        if original is not None:  # MONAILabel/originalLabel defaults to True
            names = original["info"].get("params", {}).get("label_names", {})
            labels = list(names.keys()) if names else self.info.get("labels")
            self.update_segmentation_mask(self.client().download_label(self.image_id, "original"), list(labels))
            shown_original = True
        self.init_sample()
        sample["shown_original"] = shown_original
        return sample

    def init_sample(self) -> None:
        for label in self.info.get("labels", []):  # updateSegmentationMask(None, labels): empty segments
            self.segments.setdefault(label, np.zeros(self.shape(), bool))
        if self.auto_run:
            for label in self.info.get("labels", []):
                for name, model in self.info["models"].items():
                    if label in model.get("labels", []):
                        self.run_model(name)
                        return

    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.image.GetSize()))

    # -- onClickSegmentation + updateSegmentationMask ------------------------------------------
    def run_model(self, model: str, edits: dict | None = None) -> dict:
        if self.info["models"][model].get("type") not in ("segmentation", "detection"):
            raise ModuleError(f"model '{model}' is not shown in Slicer")
        params = self.options("models", model, edits=edits)
        params["result_extension"] = ".nrrd"
        params["result_dtype"] = "uint8"
        result_file, result = self.client().infer(model, self.image_id, params)
        result = json.loads(result) if isinstance(result, (bytes, str)) else result
        labels = result.get("label_names") if result and result.get("label_names") else self.info["models"][model].get("labels")
        if labels and isinstance(labels, dict):
            labels = [k for k, _ in sorted(labels.items(), key=lambda item: item[1])]
        self.update_segmentation_mask(result_file, labels)
        Path(result_file).unlink(missing_ok=True)
        self.log.append(f"run {model}: {result.get('notes')}")
        return result

    def update_segmentation_mask(self, path: str, labels: list[str]) -> None:
        labels = [label for label in labels if label != "background"]
        array = sitk.GetArrayFromImage(sitk.ReadImage(path))
        if array.shape != self.shape():
            raise ModuleError(f"result of shape {array.shape} on an image of shape {self.shape()}")
        present = [int(v) for v in np.unique(array) if v]
        if present and max(present) > len(labels):
            raise ModuleError(f"label values {present} but only {len(labels)} names: Slicer makes unnamed segments")
        for i, name in enumerate(labels, start=1):
            self.segments[name] = array == i  # ImportLabelmapToSegmentationNode overwrites these segments

    # -- onSaveLabel -------------------------------------------------------------------------
    def submit(self, order: list[str] | None = None) -> dict:
        """Submit as Slicer does; ``order`` is the segment order after the user's edits."""
        names = order or list(self.segments)
        label = np.zeros(self.shape(), np.uint8)
        label_info, value = [], 0
        for idx, name in enumerate(names):
            if name in HIDDEN_SEGMENTS:
                continue
            value += 1  # ExportSegmentsToLabelmapNode numbers the exported segments 1..n
            label[self.segments[name]] = value
            label_info.append({"name": name, "idx": idx + 1})
        out = sitk.GetImageFromArray(label)
        out.CopyInformation(self.image)
        path = tempfile.NamedTemporaryFile(suffix=".nii.gz", dir=self.tmpdir, delete=False).name
        sitk.WriteImage(out, path)
        result = self.client().save_label(self.image_id, path, params={"label_info": label_info, "model": "cascade"})
        Path(path).unlink(missing_ok=True)
        self.fetch_info()
        return result

    # -- onTraining + monitorTraining --------------------------------------------------------
    def train(self, trainer: str, edits: dict | None = None, timeout_s: float = 600) -> list[TrainingView]:
        """Start a trainer with the Options table's values and poll as the module's timer does."""
        params = self.options("trainers", trainer, edits=edits)
        self.client().train_start(trainer, params)
        views: list[TrainingView] = []
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.update_gui(self.client().info())  # every poll also refreshes the panel
            status = self.client().train_status(False)
            if status and status.get("status") in ("SUBMITTED", "QUEUED"):
                time.sleep(0.3)  # the module's first poll comes 5 s after Train; a run is started by then
                continue
            if status and status.get("status") == "RUNNING":
                view = self.monitor_training()
                if view is not None:
                    views.append(view)
                time.sleep(0.3)
                continue
            self.fetch_info()
            if status.get("status") != "DONE":
                raise ModuleError(f"training {trainer} ended {status.get('status')}: {list(status.get('details', []))[-5:]}")
            return views
        raise ModuleError(f"training {trainer} still running after {timeout_s} s")

    def monitor_training(self) -> TrainingView | None:
        info = self.client().info()
        train_stats = info.get("train_stats")
        if not train_stats:
            return None
        first = next(iter(train_stats.values()))
        current = 0 if first.get("total_time") else first.get("epoch", 1)
        total = first.get("total_epochs", 1)
        try:
            percent = max(1, 100 * current / total)
        except TypeError as e:
            raise ModuleError(f"monitorTraining raises on epoch={current!r}, total_epochs={total!r}") from e
        tooltip = f"{current}/{total} epoch is completed"
        return TrainingView(percent, tooltip, accuracy_bar(first.get("best_metric", 0)), first.get("trainer"))
