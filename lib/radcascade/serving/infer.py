"""Infer tasks: ``cascade`` (organ -> lesions -> classes, registered first), ``organ``, ``lesion``
and ``classify`` (classes for the lesions of a corrected label).

All share one :class:`~radcascade.cascade.Cascade`, so the networks are loaded once and stay
warm; a republished model file is picked up on the next request (one ``stat`` per request).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from radcascade.cascade import Cascade, CascadeResult
from radcascade.labels import ORGAN_VALUE
from radcascade.preprocessing import BoundingBox
from radcascade.serving.errors import as_http_errors, client_error
from radcascade.stages import OrganResult
from radcascade.volumes import Volume, atomic_write_image, label_image_like, load_label_for, load_volume

logger = logging.getLogger(__name__)


def write_result(label: np.ndarray, volume: Volume) -> str:
    """Write a canonical label map back onto the image's original geometry, in a temporary file."""
    fd, path = tempfile.mkstemp(prefix="radcascade-", suffix=".nii.gz")
    os.close(fd)
    atomic_write_image(label_image_like(label, volume), path)
    return path


def _wants(request: dict, key: str) -> bool:
    v = request.get(key, False)
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")


class _Saliency:
    """On request (``"saliency": true``) a Grad-CAM map per lesion, stored as label tag ``saliency``."""

    def _saliency(self, volume: Volume, result: CascadeResult, request: dict) -> dict | None:
        if not _wants(request, "saliency"):
            return None
        if not result.lesions or result.provisional_classes:
            return {"available": False, "reason": "no classified lesions"}
        t0 = time.perf_counter()
        with as_http_errors():
            cam, peaks = self.cascade.saliency(volume, result.lesions)
        out = {"available": True, "peaks": [p.__dict__ for p in peaks], "tag": "saliency"}
        image_id = request.get("image_id")
        if image_id and self.datastore is not None:
            self.datastore().save_map(image_id, "saliency", label_image_like(cam, volume))
            out["download"] = f"/datastore/label?label={image_id}&tag=saliency"
        result.latencies_s["saliency"] = time.perf_counter() - t0
        return out


class _CascadeTask(_Saliency, InferTask):
    """Common part: honest description, loading the request's image with validation."""

    stage_names: tuple[str, ...] = ()

    def __init__(self, cascade: Cascade, description: str, max_voxels: int, datastore=None):
        self.cascade = cascade
        self.max_voxels = max_voxels
        self.datastore = datastore
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=self._labels(),
            dimension=3,
            description=description,
            config={"device": str(cascade.device)},
        )
        self._base_description = description

    def _labels(self) -> Dict[str, int]:
        return self.cascade.contract.names_to_values()

    def _models(self):
        models = {"organ": self.cascade.organ_model, "lesion": self.cascade.lesion_model}
        if self.cascade.classifier_model is not None:
            models["classifier"] = self.cascade.classifier_model
        return models

    def info(self) -> Dict[str, Any]:
        info = super().info()
        status = {name: self._models()[name].status() for name in self.stage_names if name in self._models()}
        untrained = [n for n, s in status.items() if s.startswith("UNTRAINED")]
        prefix = f"UNTRAINED ({', '.join(untrained)}): " if untrained else ""
        info["description"] = prefix + self._base_description + " | " + "; ".join(f"{k}: {v}" for k, v in status.items())
        info["stages"] = status
        return info

    def is_valid(self) -> bool:
        return True

    def _load(self, request) -> Volume:
        path = request.get("image")
        if not path:
            raise client_error(404, "no image given")
        with as_http_errors(f"image '{Path(path).name}'"):
            return load_volume(path, self.max_voxels)

    def _respond(self, volume: Volume, result: CascadeResult, t0: float, latencies: dict,
                 request: dict | None = None) -> Tuple[str, Dict]:
        t1 = time.perf_counter()
        path = write_result(result.label, volume)
        result.latencies_s = {**latencies, **result.latencies_s, "write": time.perf_counter() - t1}
        try:
            saliency = self._saliency(volume, result, request or {})
        except BaseException:  # the result file must not outlive a failed request
            Path(path).unlink(missing_ok=True)
            raise
        result.latencies_s["total"] = time.perf_counter() - t0
        out = result.to_json(self.cascade.contract)
        if saliency is not None:
            out["saliency"] = saliency
        out["models"] = {
            name: {"status": self._models()[name].status(), "version": self._models()[name].version()}
            for name in self.stage_names if name in self._models()
        }
        return path, out


class CascadeInferTask(_CascadeTask):
    """Organ, then lesions, then their classes, in one request, on one in-memory image."""

    stage_names = ("organ", "lesion", "classifier")

    def __call__(self, request) -> Tuple[str, Dict]:
        t0 = time.perf_counter()
        volume = self._load(request)
        load_s = time.perf_counter() - t0
        with as_http_errors():
            result = self.cascade.run(volume)
        return self._respond(volume, result, t0, {"load": load_s}, request)


class OrganInferTask(_CascadeTask):
    """Stage 1 only: the organ mask."""

    stage_names = ("organ",)

    def _labels(self) -> Dict[str, int]:
        return {self.cascade.contract.organ: ORGAN_VALUE}

    @torch.no_grad()
    def __call__(self, request) -> Tuple[str, Dict]:
        t0 = time.perf_counter()
        volume = self._load(request)
        load_s = time.perf_counter() - t0
        with as_http_errors():
            image = torch.from_numpy(volume.array).to(self.cascade.device).unsqueeze(0)
            organ = self.cascade.organ_stage(image, volume.spacing)
        label = np.zeros(volume.shape, dtype=np.uint8)
        if organ.found:
            label[organ.box.slices][organ.mask.cpu().numpy()] = ORGAN_VALUE
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        result = CascadeResult(label, organ.found, float((label > 0).sum()) * voxel_ml, [], {"organ": organ.latency_s},
                               provisional_classes=False)
        return self._respond(volume, result, t0, {"load": load_s})


class LesionInferTask(_CascadeTask):
    """Stage 2: lesions inside the organ; the organ comes from an uploaded label if one is sent
    (e.g. a corrected organ), otherwise from stage 1."""

    stage_names = ("organ", "lesion")

    def __call__(self, request) -> Tuple[str, Dict]:
        t0 = time.perf_counter()
        volume = self._load(request)
        load_s = time.perf_counter() - t0
        label_path = request.get("label")
        with as_http_errors():
            if label_path and Path(label_path).exists():
                organ_mask = self.cascade.contract.organ_mask(load_label_for(label_path, volume))
                box = BoundingBox.of_mask(organ_mask)
                if box is None:
                    raise client_error(422, "the uploaded label has no organ voxels")
                device = self.cascade.device
                organ = OrganResult(box, torch.from_numpy(organ_mask[box.slices]).to(device), 0.0)
                result = self.cascade.run(volume, organ=organ)
                result.notes.append("organ taken from the uploaded label")
            else:
                result = self.cascade.run(volume)
        return self._respond(volume, result, t0, {"load": load_s})


class ClassifyInferTask(_CascadeTask):
    """Stage 3 on a corrected label: lesion outlines as drawn, classes re-predicted.

    The label is the one uploaded with the request, or else the study's final label in the datastore.
    """

    stage_names = ("classifier",)

    def __call__(self, request) -> Tuple[str, Dict]:
        t0 = time.perf_counter()
        volume = self._load(request)
        load_s = time.perf_counter() - t0
        label_path = request.get("label")
        if not (label_path and Path(label_path).exists()):
            image_id = request.get("image_id")
            label_path = self.datastore().get_label_uri(image_id, "final") if image_id else ""
            if not label_path:
                raise client_error(404, f"no label to classify: upload one with the request or submit a final "
                                        f"label for '{image_id}' first")
        with as_http_errors("label"):
            raw = load_label_for(label_path, volume)
            label = self.cascade.contract.remap_by_name(raw, request.get("label_info"))
            result = self.cascade.relabel(volume, label)
        return self._respond(volume, result, t0, {"load": load_s}, request)
