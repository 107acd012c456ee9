"""Infer tasks: ``cascade`` (organ -> lesions -> classes, registered first), ``organ``, ``lesion``,
``classify`` (classes for the lesions of a corrected label) and ``saliency`` (where the classifier
looked, as segments).

All share one :class:`~radcascade.cascade.Cascade`, so the networks are loaded once and stay
warm; a republished model file is picked up on the next request (one ``stat`` per request).

What each answer *names* matters in 3D Slicer: the module replaces exactly the segments named in
``label_names`` (label value *i* goes to the *i*-th name by value), so ``organ`` names only the
organ and ``lesion`` only the lesion classes (values 1..K in its file): re-running one stage leaves
the other stage's segments, and the user's edits to them, alone.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from radcascade.cascade import Cascade, CascadeResult, new_label, organ_from_label
from radcascade.labels import ORGAN_VALUE
from radcascade.serving.archive import ArchiveDatastore
from radcascade.serving.errors import as_http_errors, client_error
from radcascade.serving.options import parse_bool
from radcascade.serving.reports import ReportStore
from radcascade.serving.results import discard, new_result_path
from radcascade.serving.slicer_view import first_of
from radcascade.volumes import Volume, label_image_like, load_label_for, load_volume

logger = logging.getLogger(__name__)


ORIGINAL_TAG = "original"  # MONAI Label's tag for a model's first prediction; Slicer shows it on Next sample
ATTENTION_BANDS = {"attention high": (170, 1), "attention medium": (85, 2)}  # name: (min saliency 0-255, value)

RESULT_SUFFIXES = (".nii.gz", ".nrrd", ".nii")  # Slicer's module asks for ".nrrd" (``result_extension``)


def write_result(label: np.ndarray, volume: Volume, suffix: str = ".nii.gz") -> str:
    """Write a canonical label map back onto the image's original geometry, in a private answer folder
    (see :mod:`radcascade.serving.results`; removed with the file once it is sent)."""
    if suffix not in RESULT_SUFFIXES:
        raise client_error(422, f"unsupported result_extension '{suffix}' (one of {', '.join(RESULT_SUFFIXES)})")
    path = new_result_path(suffix)
    try:
        sitk.WriteImage(label_image_like(label, volume), str(path), useCompression=True)
    except BaseException:
        discard(path)
        raise
    return str(path)


def _wants(request: dict, key: str, default: bool = False) -> bool:
    value = first_of(request.get(key, default))
    return default if value in (None, "") else parse_bool(value, key)


def renumber(label: np.ndarray, names: Dict[str, int]) -> tuple[np.ndarray, Dict[str, int]]:
    """Keep only the contract values in ``names`` and number them 1..n (Slicer's positional mapping)."""
    lut = np.zeros(max(256, int(label.max()) + 1), dtype=np.uint8)
    out_names = {}
    for i, (name, value) in enumerate(sorted(names.items(), key=lambda kv: kv[1]), start=1):
        lut[value] = i
        out_names[name] = i
    return lut[label], out_names


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
    #: options shown in Slicer's Options panel (a list is a drop-down; its first item is sent)
    options: Dict[str, Any] = {}

    def __init__(self, cascade: Cascade, description: str, max_voxels: int, datastore=None,
                 reports: ReportStore | None = None):
        self.cascade = cascade
        self.max_voxels = max_voxels
        self.datastore = datastore
        self.reports = reports
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=self._labels(),
            dimension=3,
            description=description,
            config=dict(self.options),
        )
        self._base_description = description

    def _labels(self) -> Dict[str, int]:
        return self.cascade.contract.names_to_values()

    def _models(self):
        return self.cascade.models()

    def info(self) -> Dict[str, Any]:
        info = super().info()
        models = self._models()
        status = {name: models[name].status() for name in self.stage_names if name in models}
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

    def _image_id(self, request: dict) -> str | None:
        image_id = request.get("image_id")
        return image_id if isinstance(image_id, str) and image_id and self.datastore is not None else None

    def _submitted_label(self, request: dict) -> str | None:
        """The study's submitted (final) label, if it has one."""
        image_id = self._image_id(request)
        return self.datastore().get_label_uri(image_id, "final") or None if image_id else None

    def _classified(self, volume: Volume, label_path: str | None, label_info, keep_drawn_classes: bool) -> CascadeResult:
        """The lesions of a label (mapped by ``label_info``; None: contract values) with their classes,
        or, without a label, the cascade's own lesions."""
        if label_path:
            label = self.cascade.contract.remap_by_name(load_label_for(label_path, volume), label_info)
            return self.cascade.relabel(volume, label, keep_drawn_classes=keep_drawn_classes)
        result = self.cascade.run(volume)
        result.notes.append("no submitted label for this study: classified the cascade's own lesions")
        return result

    def model_versions(self) -> Dict[str, Any]:
        models = self._models()  # each model's file is checked once, not once per name
        return {name: {"status": models[name].status(), "version": models[name].version()}
                for name in self.stage_names if name in models}

    def _respond(self, volume: Volume, result: CascadeResult, t0: float, latencies: dict,
                 request: dict | None = None, label_names: Dict[str, int] | None = None) -> Tuple[str, Dict]:
        """Write the label (only ``label_names``' values, renumbered 1..n, when given) and the answer."""
        request = request or {}
        t1 = time.perf_counter()
        label = result.label
        if label_names is not None:
            label, label_names = renumber(label, label_names)
        path = write_result(label, volume, str(request.get("result_extension") or ".nii.gz"))
        result.latencies_s = {**latencies, **result.latencies_s, "write": time.perf_counter() - t1}
        try:
            saliency = self._saliency(volume, result, request)
        except BaseException:  # the result file must not outlive a failed request
            discard(path)
            raise
        result.latencies_s["total"] = time.perf_counter() - t0
        out = result.to_json(self.cascade.contract)
        if label_names is not None:
            out["label_names"] = {"background": 0, **label_names}
        if saliency is not None:
            out["saliency"] = saliency
        out["models"] = self.model_versions()
        image_id = self._image_id(request)
        if image_id and self.reports is not None and out.get("lesions") is not None:
            out["report"] = self.reports.save(image_id, self.__class__.__name__, out)
        return path, out


class CascadeInferTask(_CascadeTask):
    """Organ, then lesions, then their classes, in one request, on one in-memory image.

    Next sample keeps its answer as the study's ``original`` label (:meth:`precompute_original`:
    what Slicer loads even when its auto-run setting is off); a later request with the same models
    is answered from that copy instead of running the networks again.  Other requests do not store
    anything but the findings report (storing a CT-sized label costs more than the networks do).
    """

    stage_names = ("organ", "lesion", "lesion_small", "classifier")
    options = {"fresh": False}  # run the networks even when the stored result is from the same models

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._archive() is not None:  # a DICOMweb archive: offer to keep the result there (SEG + SR)
            self._config["store_in_archive"] = False

    def _archive(self):
        store = self.datastore() if self.datastore is not None else None
        return store if isinstance(store, ArchiveDatastore) else None

    def __call__(self, request) -> Tuple[str, Dict]:
        t0 = time.perf_counter()
        store = _wants(request, "store_in_archive")
        if store and (self._archive() is None or not self._image_id(request)):
            raise client_error(422, "store_in_archive needs a study of a DICOMweb archive (--studies http://.../dicom-web)")
        reuse = not (_wants(request, "saliency") or _wants(request, "fresh"))
        answer = self._from_original(request, t0) if reuse else None
        if answer is None:
            volume = self._load(request)
            load_s = time.perf_counter() - t0
            with as_http_errors():
                result = self.cascade.run(volume)
            answer = self._respond(volume, result, t0, {"load": load_s}, request)
            answer[1]["cached"] = False
        if store:
            path, out = answer
            try:
                out["archive"] = self._archive().store_result(self._image_id(request), path, out).to_json()
            except BaseException:
                discard(path)
                raise
        return answer

    def precompute_original(self, image_id: str) -> bool:
        """Run the cascade on a study unless its ``original`` label is already from the current models."""
        if self._original_info(image_id) is not None:
            return False
        path, out = self({"image": self.datastore().get_image_uri(image_id), "image_id": image_id, "fresh": True})
        try:
            self._keep_original(image_id, path, out)
        finally:
            discard(path)
        return True

    def _original_info(self, image_id: str) -> dict | None:
        store = self.datastore()
        info = store.get_label_info(image_id, ORIGINAL_TAG) if store.get_label_uri(image_id, ORIGINAL_TAG) else None
        result = (info or {}).get("result")
        if not isinstance(result, dict) or result.get("models") != self.model_versions():
            return None
        return info

    def _from_original(self, request: dict, t0: float) -> Tuple[str, Dict] | None:
        image_id = self._image_id(request)
        info = self._original_info(image_id) if image_id else None
        if info is None:
            return None
        path = str(new_result_path(".nii.gz"))
        shutil.copyfile(self.datastore().get_label_uri(image_id, ORIGINAL_TAG), path)
        out = dict(info["result"])
        out["computed_latencies"] = out.get("latencies", {})  # of the run that made the stored answer
        out["latencies"] = {"total": round(time.perf_counter() - t0, 4)}
        out["cached"] = True
        out["notes"] = [*out.get("notes", []), "answered from the study's stored cascade result (same models)"]
        return path, out

    def _keep_original(self, image_id: str, path: str, out: dict) -> None:
        try:
            self.datastore().save_label(image_id, path, ORIGINAL_TAG, {
                "params": {"label_names": out["label_names"]},  # what Slicer reads on Next sample
                "result": out,
            })
        except Exception as e:  # noqa: BLE001 - the answer stands even if the copy cannot be kept
            logger.warning("could not keep the cascade result of %s as its original label: %s", image_id, e)


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
        label = new_label(volume.shape)
        if organ.found:
            label[organ.box.slices][organ.mask.cpu().numpy()] = ORGAN_VALUE
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        result = CascadeResult(label, organ.found, float((label > 0).sum()) * voxel_ml, [], {"organ": organ.latency_s},
                               provisional_classes=False)
        return self._respond(volume, result, t0, {"load": load_s}, request, label_names=self._labels())


class LesionInferTask(_CascadeTask):
    """Stage 2: lesions inside the organ, answered as lesion segments only (the organ segment and
    its edits stay as they are in Slicer).

    The organ comes from, in order: a label uploaded with the request; with ``organ_from`` =
    ``submitted label`` (default) the organ of the study's submitted label; else stage 1.
    """

    stage_names = ("organ", "lesion", "lesion_small", "classifier")
    options = {"organ_from": ["submitted label", "organ stage"]}

    def _labels(self) -> Dict[str, int]:
        contract = self.cascade.contract
        return {name: contract.value_of(name) for name in contract.lesion_classes}

    def __call__(self, request) -> Tuple[str, Dict]:
        t0 = time.perf_counter()
        volume = self._load(request)
        load_s = time.perf_counter() - t0
        label_path, source = request.get("label"), "the uploaded label"
        if not (label_path and Path(label_path).exists()):
            label_path, source = None, None
            if first_of(request.get("organ_from")) in (None, "", "submitted label"):
                label_path, source = self._submitted_label(request), "the submitted label"
        with as_http_errors():
            if label_path:
                organ_mask = self.cascade.contract.organ_mask(load_label_for(label_path, volume))
                organ = organ_from_label(organ_mask, self.cascade.device)
                if organ is None:
                    raise client_error(422, f"{source} has no organ voxels")
                result = self.cascade.run(volume, organ=organ)
                result.notes.append(f"organ taken from {source}")
            else:
                result = self.cascade.run(volume)
                result.notes.append("organ from the organ stage")
        return self._respond(volume, result, t0, {"load": load_s}, request, label_names=self._labels())


class ClassifyInferTask(_CascadeTask):
    """Stage 3 on a corrected label: lesion outlines as drawn, each lesion's class from the classifier.

    The label is the one uploaded with the request, else the study's submitted label, else the
    cascade's own result.  With ``keep_drawn_classes`` (default, shown as a check box in Slicer) a
    class the radiologist painted is never overwritten: the classifier's opinion is reported beside
    it and each disagreement is named in the notes.
    """

    stage_names = ("classifier",)
    options = {"keep_drawn_classes": True}

    def __call__(self, request) -> Tuple[str, Dict]:
        t0 = time.perf_counter()
        volume = self._load(request)
        load_s = time.perf_counter() - t0
        label_path = request.get("label")
        label_info = request.get("label_info")
        if not (label_path and Path(label_path).exists()):
            label_path, label_info = self._submitted_label(request), None  # stored in contract values
        keep = _wants(request, "keep_drawn_classes", default=True)
        with as_http_errors("label"):
            result = self._classified(volume, label_path, label_info, keep)
        return self._respond(volume, result, t0, {"load": load_s}, request)


class SaliencyInferTask(_CascadeTask):
    """Where the classifier looked, as segments Slicer can show: Grad-CAM of each lesion's class on
    its axial slice, in two bands (``attention high`` / ``attention medium``).

    Lesions come from the study's submitted label, else the cascade.  The bands are an overlay:
    delete them before Submit (a label that contains them is refused, they would hide label voxels).
    """

    stage_names = ("classifier",)

    def _labels(self) -> Dict[str, int]:
        return {name: value for name, (_, value) in ATTENTION_BANDS.items()}

    def __call__(self, request) -> Tuple[str, Dict]:
        t0 = time.perf_counter()
        volume = self._load(request)
        load_s = time.perf_counter() - t0
        with as_http_errors():
            result = self._classified(volume, self._submitted_label(request), None, keep_drawn_classes=False)
            t1 = time.perf_counter()
            if not result.lesions or result.provisional_classes:
                raise client_error(422, "no classified lesions to explain (no lesion found, or no trained classifier)")
            cam, peaks = self.cascade.saliency(volume, result.lesions)
        bands = np.zeros(volume.shape, dtype=np.uint8)
        for name, (threshold, value) in sorted(ATTENTION_BANDS.items(), key=lambda kv: kv[1][0]):
            bands[cam >= threshold] = value
        out_result = CascadeResult(bands, result.organ_found, result.organ_volume_ml, result.lesions,
                                   {**result.latencies_s, "saliency": time.perf_counter() - t1}, provisional_classes=False,
                                   notes=["attention bands are an overlay: delete them before Submit label"])
        path, out = self._respond(volume, out_result, t0, {"load": load_s}, {**request, "image_id": None},
                                  label_names=self._labels())
        out["peaks"] = [p.__dict__ for p in peaks]
        return path, out
