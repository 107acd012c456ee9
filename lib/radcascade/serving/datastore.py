"""A local datastore that validates before it writes: nothing half-written, nothing outside it.

MONAI Label's ``LocalDatastore`` layout is kept (images in the studies folder, labels in
``labels/<tag>/``), so ``--studies`` works on any folder. What changes:

* image ids and label tags are checked (no path separators, no ``..``);
* an uploaded image must be a readable 3D volume within the size limit;
* a submitted label must be readable, lie on its image's exact geometry, and every value must be
  named in Slicer's ``label_info`` with a name the app knows; it is stored **in contract values**
  (remapped by name), written to a temporary file and renamed into place;
* nothing is destroyed: the label a save replaces, and a label removed, go to
  ``.radcascade/label-history/<tag>/<id>/``; an image replaced by a new upload goes to
  ``.radcascade/image-history/<id>/``; a removed image goes, with its labels, to
  ``.radcascade/removed/<time>-<id>/`` (restore by moving the files back and restarting);
* info that the server itself maintains (file names, ``label_info``) cannot be edited over HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import numpy as np
import SimpleITK as sitk
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel

from radcascade.files import atomic_write_path, remove_stale_temporaries, write_text_atomic
from radcascade.labels import LabelContract
from radcascade.serving.errors import as_http_errors, client_error
from radcascade.volumes import (
    DEFAULT_MAX_VOXELS,
    atomic_write_image,
    read_geometry,
    read_image,
    read_label,
)

logger = logging.getLogger(__name__)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\- ]{0,127}$")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


@dataclass(frozen=True)
class ValidatedLabel:
    """A submitted label in contract values on its image's geometry, and what is recorded about it."""

    image: sitk.Image
    values: np.ndarray  # [z, y, x] uint8 contract values
    info: Dict[str, Any]


def check_id(kind: str, value: str) -> str:
    if not value or not SAFE_ID.match(value) or ".." in value:
        raise client_error(422, f"invalid {kind} '{value}': use letters, digits, '.', '_', '-' (no path separators, no '..')")
    return value


def _suffix(filename: str) -> str:
    name = filename.lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    raise client_error(415, f"unsupported file type '{os.path.basename(filename)}': send {', '.join(IMAGE_SUFFIXES)}")


class ValidatingDatastore(LocalDatastore):
    """``LocalDatastore`` with validation, name-based label remapping and atomic writes."""

    def __init__(self, studies: str, contract: LabelContract, max_voxels: int = DEFAULT_MAX_VOXELS, **kwargs):
        self.contract = contract
        self.max_voxels = max_voxels
        super().__init__(studies, **kwargs)
        self.history_dir = Path(self._datastore_path) / ".radcascade" / "label-history"
        self.image_history_dir = Path(self._datastore_path) / ".radcascade" / "image-history"
        self.removed_dir = Path(self._datastore_path) / ".radcascade" / "removed"
        removed = remove_stale_temporaries(self._datastore_path)
        if removed:
            logger.info("removed %d leftovers of interrupted writes", removed)

    @property
    def folder(self) -> Path:
        """The datastore's folder (for an archive: its local cache)."""
        return Path(self._datastore_path)

    def _update_datastore_file(self, lock=True):
        """The stock method rewrites ``datastore_v2.json`` in place: a kill mid-write leaves a file that
        stops the next start-up. Write a temporary file and rename it instead."""

        def write():
            self._ignore_event_config = True
            payload = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            write_text_atomic(self._datastore_config_path, payload)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    def reload_if_changed(self) -> None:
        """Pick up what another process (scoring, training) wrote to the datastore file."""
        with FileLock(self._lock_file):
            self._reload_unlocked()

    def _reload_unlocked(self) -> None:
        """Re-read the datastore file if it changed (caller holds the lock; FileLock is not re-entrant)."""
        path = self._datastore_config_path
        if os.path.exists(path) and os.stat(path).st_mtime != self._config_ts:
            ts = os.stat(path).st_mtime
            with open(path) as fp:
                self._datastore = LocalDatastoreModel.model_validate_json(fp.read())
            self._datastore.base_path = self._datastore_path
            self._config_ts = ts

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        """Read-modify-write under the lock: the server and the scoring subprocess both write the
        datastore file, and a stale in-memory copy must never overwrite the other's changes."""
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                raise client_error(404, f"unknown image id '{image_id}'")
            obj.image.info.update(info)
            self._update_datastore_file(lock=False)

    # -- images ---------------------------------------------------------------------------------
    def require_image(self, image_id: str) -> str:
        """Path of a known image, or a 404 naming the id."""
        uri = self.get_image_uri(image_id)
        if not uri:
            raise client_error(404, f"unknown image id '{image_id}'")
        return uri

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        ext = _suffix(image_filename)
        image_id = check_id("image id", image_id or os.path.basename(image_filename)[: -len(ext)])
        with as_http_errors(f"image '{image_id}'"):
            read_image(image_filename, self.max_voxels)
        name = self._filename(image_id, ext)
        dest = Path(self._datastore.image_path()) / name
        with FileLock(self._lock_file):
            self._reload_unlocked()
            existing = self._datastore.objects.get(image_id)
            if existing is not None and existing.labels:
                raise client_error(409, f"image '{image_id}' already exists and has labels; remove it first")
            if existing is not None:
                self._set_aside(Path(self.get_image_uri(image_id)), self.image_history_dir / image_id)
            atomic_write_path(dest, lambda tmp: shutil.copyfile(image_filename, tmp))
            info = dict(image_info or {})
            info.update({"ts": int(time.time()), "name": name})
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    # -- labels ---------------------------------------------------------------------------------
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        label = self.validated_label(image_id, label_filename, label_tag, label_info)
        self.store_label(image_id, label_tag, label)
        return image_id

    def validated_label(self, image_id: str, label_filename: str, label_tag: str,
                        label_info: Dict[str, Any]) -> ValidatedLabel:
        """Read a submitted label, check it against its image and remap it by name (writes nothing)."""
        check_id("label tag", label_tag)
        image_uri = self.require_image(image_id)
        _suffix(label_filename)
        params = dict(label_info or {})
        submitted_info = params.pop("label_info", None)
        with as_http_errors(f"image '{image_id}'"):
            expected = read_geometry(image_uri)
        with as_http_errors(f"label for '{image_id}'"):
            label = read_label(label_filename, expected)
            values = sitk.GetArrayFromImage(label)
            remapped_label = self.contract.remap_submitted(values, submitted_info)
            remapped = remapped_label.label.astype(np.uint8)
        out = sitk.GetImageFromArray(remapped)
        out.CopyInformation(label)
        params.update({
            "submitted_label_info": submitted_info,
            "ignored_label_info": list(remapped_label.ignored),  # empty segments with unknown names
        })
        return ValidatedLabel(out, remapped, params)

    def store_label(self, image_id: str, label_tag: str, label: ValidatedLabel) -> None:
        """Write a validated label atomically (the replaced one kept in the label history)."""
        name = self._filename(image_id, ".nii.gz")
        dest = Path(self._datastore.label_path(label_tag)) / name
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                raise client_error(404, f"unknown image id '{image_id}'")
            self._keep_history(image_id, label_tag)
            atomic_write_image(label.image, dest)
            old = obj.labels.get(label_tag)
            if old is not None and old.ext != ".nii.gz":
                (Path(self._datastore.label_path(label_tag)) / self._filename(image_id, old.ext)).unlink(missing_ok=True)
            params = dict(label.info)
            params.update(
                {
                    "ts": int(time.time()),
                    "name": name,
                    "label_info": [{"name": n, "idx": v} for n, v in self.contract.names_to_values().items()],
                    "label_counts": {self.contract.name_of(int(v)): int(c)
                                     for v, c in zip(*np.unique(label.values, return_counts=True))},
                }
            )
            obj.labels[label_tag] = DataModel(info=params, ext=".nii.gz")
            self._update_datastore_file(lock=False)
        logger.info("saved label %s/%s (remapped by name: %s)", label_tag, image_id,
                    label.info.get("submitted_label_info") is not None)

    def save_map(self, image_id: str, tag: str, image: sitk.Image) -> None:
        """Store a server-made map (e.g. Grad-CAM) under ``labels/<tag>/`` so clients can download it."""
        check_id("label tag", tag)
        if tag == "final":
            raise ValueError("maps never replace the final label")
        name = self._filename(image_id, ".nii.gz")
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                raise client_error(404, f"unknown image id '{image_id}'")
            atomic_write_image(image, Path(self._datastore.label_path(tag)) / name)
            obj.labels[tag] = DataModel(info={"ts": int(time.time()), "name": name, "kind": tag}, ext=".nii.gz")
            self._update_datastore_file(lock=False)

    # -- removal: set aside, never deleted -------------------------------------------------------
    @staticmethod
    def _set_aside(src: Path, folder: Path, move: bool = True) -> Path | None:
        """Move (or copy) ``src`` into ``folder`` under a time-stamped name; None if it is not there."""
        if not src.is_file():
            return None
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".nii.gz" if src.name.endswith(".nii.gz") else src.suffix
        target = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{int(time.time() * 1e6) % 1000000:06d}{suffix}"
        (shutil.move if move else shutil.copy2)(str(src), str(target))
        return target

    def remove_image(self, image_id: str) -> None:
        """Take an image and its labels out of the datastore into ``.radcascade/removed/``."""
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                raise client_error(404, f"unknown image id '{image_id}'")
            folder = self.removed_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{image_id}"
            for tag in list(obj.labels):
                self._set_aside(Path(self.get_label_uri(image_id, tag)), folder / "labels" / tag)
            self._set_aside(Path(self.get_image_uri(image_id)), folder)
            del self._datastore.objects[image_id]
            self._update_datastore_file(lock=False)
        logger.info("removed image %s (kept in %s)", image_id, folder)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Take a label out of the datastore into its label history."""
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects.get(label_id)
            if obj is None or label_tag not in obj.labels:
                raise client_error(404, f"no label '{label_tag}' for image '{label_id}'")
            self._set_aside(Path(self.get_label_uri(label_id, label_tag)), self.history_dir / label_tag / label_id)
            del obj.labels[label_tag]
            self._update_datastore_file(lock=False)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects.get(label_id)
            if obj is None or label_tag not in obj.labels:
                raise client_error(404, f"no label '{label_tag}' for image '{label_id}'")
            obj.labels[label_tag].info.update(info)
            self._update_datastore_file(lock=False)

    def _keep_history(self, image_id: str, tag: str) -> None:
        obj = self._datastore.objects.get(image_id)
        old = obj.labels.get(tag) if obj else None
        if old is None:
            return
        src = Path(self._datastore.label_path(tag)) / self._filename(image_id, old.ext)
        self._set_aside(src, self.history_dir / tag / image_id, move=False)
