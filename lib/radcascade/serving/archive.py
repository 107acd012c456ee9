"""Serving a DICOMweb archive (a PACS, e.g. Orthanc): ``--studies http://host:8042/dicom-web``.

The archive is mirrored into a local cache folder that is an ordinary :class:`ValidatingDatastore`,
so inference, training, active learning and every bad-input check work exactly as on local files:

* each **CT series** of the archive is one study, its id the SeriesInstanceUID; it is fetched
  (WADO-RS), checked (:func:`radcascade.dicom_series.series_to_volume`: CT only, one geometry,
  readable pixels) and cached as NIfTI with its instance order; a series that fails is listed in
  :attr:`ArchiveDatastore.refused` with the reason, and a request naming it gets a 422;
* each **SEG** whose segments were drawn by a person (``MANUAL`` / ``SEMIAUTOMATIC``) and that
  references a cached series is that study's training label (the newest one wins), mapped onto the
  contract by segment name;
* a **submitted label** (Slicer's Submit: NIfTI/NRRD with ``label_info``, or a DICOM SEG file) is
  validated and remapped as on local files, then stored in the archive as a SEG (STOW-RS); only
  when the archive has accepted it is the cached copy written.  A refused or failed store writes
  nothing;
* on request (``store_in_archive`` on the cascade) the cascade's result goes to the archive as an
  ``AUTOMATIC`` SEG with a TID 1500 SR of its lesions (:mod:`radcascade.dicom_sr`).

The mirror is refreshed at start-up (also in training's subprocess) and at most every
``sync_interval_s`` seconds on Next sample.  Images cannot be uploaded or removed through the
app: the archive owns them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pydicom
import SimpleITK as sitk

from radcascade.files import TMP_DIR_NAME, TMP_PREFIX, write_text_atomic
from radcascade.dicom_seg import DicomSegError, is_training_label, label_to_seg, referenced_series, seg_to_label
from radcascade.dicom_series import DicomSeriesError, SeriesVolume, series_to_volume
from radcascade.dicom_sr import lesion_report
from radcascade.dicomweb import ArchiveError, DicomWebArchive, SeriesRef
from radcascade.labels import LabelContract
from radcascade.serving.datastore import ValidatedLabel, ValidatingDatastore
from radcascade.serving.errors import client_error

logger = logging.getLogger(__name__)
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # it logs every request at INFO

FINAL_TAG = "final"
DICOM_SUFFIXES = (".dcm", ".dicom")
DEFAULT_SYNC_INTERVAL_S = 30.0


def default_cache_dir(url: str) -> Path:
    """``$RADCASCADE_DICOMWEB_CACHE`` or ``~/.cache/radcascade/dicomweb/<hash of the url>``."""
    root = os.environ.get("RADCASCADE_DICOMWEB_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "radcascade" / "dicomweb"
    return base / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ArchiveCopy:
    """What a result stored in the archive became."""

    seg_series_uid: str
    seg_instance_uid: str
    sr_series_uid: str | None
    sr_instance_uid: str | None
    lesions_reported: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


class ArchiveDatastore(ValidatingDatastore):
    """A DICOMweb archive, mirrored into a local validating datastore (see the module docstring)."""

    def __init__(self, url: str, contract: LabelContract, cache_dir: str | Path | None = None,
                 archive: DicomWebArchive | None = None, sync_interval_s: float = DEFAULT_SYNC_INTERVAL_S, **kwargs):
        self.url = url.rstrip("/")
        self.archive = archive or DicomWebArchive(self.url)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.url)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.sync_interval_s = sync_interval_s
        super().__init__(str(self.cache_dir), contract, **kwargs)
        self.dicom_dir = self.cache_dir / ".radcascade" / "dicom"
        self.dicom_dir.mkdir(parents=True, exist_ok=True)
        self.refused: Dict[str, str] = {}
        self._seg_index_path = self.dicom_dir / "seg-index.json"
        self._sync_lock = threading.Lock()
        self._last_sync = 0.0
        self.sync()

    # -- mirroring ------------------------------------------------------------------------------
    def sync(self, force: bool = True) -> None:
        """Fetch CT series and person-made SEGs the cache does not have yet."""
        if not force and time.monotonic() - self._last_sync < self.sync_interval_s:
            return
        with self._sync_lock:
            try:
                for ref in self.archive.series("CT"):
                    if ref.series_uid not in self._datastore.objects and ref.series_uid not in self.refused:
                        self._fetch_series(ref)
                self._fetch_labels(self.archive.series("SEG"))
            except ArchiveError as e:
                logger.error("%s (serving the %d cached studies)", e, len(self._datastore.objects))
            self._last_sync = time.monotonic()

    def _fetch_series(self, ref: SeriesRef) -> None:
        try:
            series = series_to_volume(self.archive.retrieve_series(ref), self.max_voxels)
        except (DicomSeriesError, ArchiveError) as e:
            self.refused[ref.series_uid] = str(e)
            logger.warning("series %s not served: %s", ref.series_uid, e)
            return
        write_text_atomic(self._headers_path(ref.series_uid),
                          json.dumps([h.to_json_dict() for h in series.headers]))
        # converted in the cache's temporaries folder (swept at start-up if a kill leaves it), then
        # taken in by the validating add_image, which checks and copies it atomically
        tmp_dir = self.cache_dir / ".radcascade" / TMP_DIR_NAME
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{TMP_PREFIX}series-{os.getpid()}-{ref.series_uid}.nii.gz"
        try:
            sitk.WriteImage(series.image, str(tmp), useCompression=True)
            super().add_image(ref.series_uid, str(tmp), {
                "source": "dicomweb", "study_uid": series.study_uid, "series_uid": series.series_uid,
                "description": ref.description})
        finally:
            tmp.unlink(missing_ok=True)
        logger.info("cached series %s (%d slices)", ref.series_uid, len(series.instance_uids))

    def _headers_path(self, series_uid: str) -> Path:
        return self.dicom_dir / f"{series_uid}.json"

    def series(self, image_id: str) -> SeriesVolume:
        """The cached instance headers of a study, in slice order (what a SEG references)."""
        path = self._headers_path(image_id)
        if not path.is_file():
            raise client_error(404, f"no DICOM series cached for '{image_id}'")
        headers = tuple(pydicom.Dataset.from_json(d) for d in json.loads(path.read_text()))
        for h in headers:
            h.is_little_endian, h.is_implicit_VR = True, False
        return SeriesVolume(None, str(headers[0].StudyInstanceUID), image_id,
                            tuple(str(h.SOPInstanceUID) for h in headers), headers)

    def _seg_index(self) -> dict:
        try:
            return json.loads(self._seg_index_path.read_text())
        except (OSError, ValueError):
            return {}

    def _fetch_labels(self, seg_refs: list[SeriesRef]) -> None:
        """Index SEG series (once each), then make each study's newest person-made SEG its label."""
        index = self._seg_index()
        indexed_before = len(index)
        fetched: Dict[str, pydicom.Dataset] = {}  # SEGs read while indexing: not fetched a second time below
        for ref in seg_refs:
            if ref.series_uid in index:
                continue
            entry = {"referenced": None, "training": False, "sop": None, "when": f"{ref.date}{ref.time}"}
            try:
                seg = fetched[ref.series_uid] = self.archive.retrieve_series(ref)[0]
                entry.update(referenced=referenced_series(seg), training=is_training_label(seg),
                             sop=str(seg.SOPInstanceUID), when=f"{getattr(seg, 'SeriesDate', '')}{getattr(seg, 'SeriesTime', '')}")
            except (ArchiveError, IndexError, AttributeError) as e:
                entry["error"] = str(e)
            index[ref.series_uid] = entry
        if len(index) > indexed_before:  # only when new SEG series were indexed
            write_text_atomic(self._seg_index_path, json.dumps(index, indent=1))
        newest: Dict[str, tuple[str, str]] = {}
        for seg_series, entry in index.items():
            study = entry.get("referenced")
            if entry.get("training") and study in self._datastore.objects:
                if study not in newest or entry["when"] >= index[newest[study][0]]["when"]:
                    newest[study] = (seg_series, entry["sop"])
        refs = {r.series_uid: r for r in seg_refs}
        for study, (seg_series, sop) in newest.items():
            current = self._datastore.objects[study].labels.get(FINAL_TAG)
            if current is not None and current.info.get("seg_instance_uid") == sop:
                continue
            if seg_series not in refs:
                continue
            try:
                seg = fetched.get(seg_series) or self.archive.retrieve_series(refs[seg_series])[0]
                values = seg_to_label(seg, self.series(study), self.contract)
            except (ArchiveError, DicomSegError) as e:
                logger.warning("SEG %s not used as the label of %s: %s", seg_series, study, e)
                continue
            self.store_label(study, FINAL_TAG, self._on_image(study, values, {
                "source": "dicomweb", "seg_series_uid": seg_series, "seg_instance_uid": sop}))
            logger.info("label of %s taken from SEG %s", study, seg_series)

    def _on_image(self, image_id: str, values: np.ndarray, info: dict) -> ValidatedLabel:
        """A ``[z, y, x]`` label map on the cached image's geometry (read from its header)."""
        image = sitk.GetImageFromArray(values.astype(np.uint8))
        reader = sitk.ImageFileReader()
        reader.SetFileName(self.get_image_uri(image_id))
        reader.ReadImageInformation()
        image.SetOrigin(reader.GetOrigin())
        image.SetSpacing(reader.GetSpacing())
        image.SetDirection(reader.GetDirection())
        return ValidatedLabel(image, values.astype(np.uint8), info)

    # -- requests -------------------------------------------------------------------------------
    def require_image(self, image_id: str) -> str:
        if image_id in self.refused:
            raise client_error(422, f"series '{image_id}' of the archive cannot be served: {self.refused[image_id]}")
        return super().require_image(image_id)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Validate, store in the archive as a SEG (final labels), then cache; nothing written on failure."""
        if label_filename.lower().endswith(DICOM_SUFFIXES):
            label = self._label_from_seg_file(image_id, label_filename, label_info)
        else:
            label = self.validated_label(image_id, label_filename, label_tag, label_info)
        if label_tag == FINAL_TAG:
            seg = label_to_seg(label.values, self.series(image_id), self.contract, automatic=False)
            self._store_in_archive([seg], f"label of '{image_id}'")
            label = ValidatedLabel(label.image, label.values, {
                **label.info, "source": "radcascade", "seg_series_uid": str(seg.SeriesInstanceUID),
                "seg_instance_uid": str(seg.SOPInstanceUID)})
            self._remember_own_seg(seg, image_id)
        self.store_label(image_id, label_tag, label)
        return image_id

    def _label_from_seg_file(self, image_id: str, path: str, label_info: Dict[str, Any]) -> ValidatedLabel:
        self.require_image(image_id)
        try:
            seg = pydicom.dcmread(path)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types on a corrupt file
            raise client_error(422, f"label for '{image_id}' is not a readable DICOM file: {e}") from e
        try:
            values = seg_to_label(seg, self.series(image_id), self.contract)
        except DicomSegError as e:
            raise client_error(422, f"label for '{image_id}': {e}") from e
        info = {k: v for k, v in (label_info or {}).items() if k != "label_info"}
        return self._on_image(image_id, values, {**info, "submitted_as": "DICOM SEG"})

    def _remember_own_seg(self, seg: pydicom.Dataset, image_id: str) -> None:
        index = self._seg_index()
        index[str(seg.SeriesInstanceUID)] = {"referenced": image_id, "training": True, "sop": str(seg.SOPInstanceUID),
                                             "when": f"{seg.SeriesDate}{seg.SeriesTime}"}
        write_text_atomic(self._seg_index_path, json.dumps(index, indent=1))

    def _store_in_archive(self, datasets: list, what: str) -> None:
        try:
            self.archive.store(datasets)
        except ArchiveError as e:
            raise client_error(502, f"{what} not stored: {e}") from e

    def result_seg(self, image_id: str, result_path: str, label_names: Dict[str, int] | None = None) -> pydicom.Dataset:
        """A model's result (values named by ``label_names``; default: contract values) as an AUTOMATIC SEG."""
        values = sitk.GetArrayFromImage(sitk.ReadImage(result_path)).astype(np.uint8)
        if label_names:
            lut = np.zeros(256, dtype=np.uint8)
            for name, value in label_names.items():
                if name == "background":
                    continue
                try:
                    lut[int(value)] = self.contract.value_of(name)
                except Exception as e:  # noqa: BLE001 - e.g. saliency bands: not a contract label
                    raise client_error(422, f"result of '{image_id}' holds '{name}', which a SEG of the label "
                                            f"contract cannot carry") from e
            values = lut[values]
        try:
            return label_to_seg(values, self.series(image_id), self.contract, automatic=True)
        except DicomSegError as e:
            raise client_error(422, f"result of '{image_id}': {e}") from e

    def store_result(self, image_id: str, result_path: str, answer: dict) -> ArchiveCopy:
        """The cascade's result as an AUTOMATIC SEG, with an SR of its lesions, in the archive."""
        seg = self.result_seg(image_id, result_path, answer.get("label_names"))
        lesions = answer.get("lesions") or []
        sr = lesion_report(lesions, seg, self.contract)
        self._store_in_archive([seg, sr], f"result of '{image_id}'")
        return ArchiveCopy(str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID), str(sr.SeriesInstanceUID),
                           str(sr.SOPInstanceUID), len(lesions))

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        raise client_error(405, "this server serves a DICOMweb archive: add studies to the archive (PACS), not here")

    def remove_image(self, image_id: str) -> None:
        raise client_error(405, "this server serves a DICOMweb archive: remove studies in the archive (PACS)")

    def remove_label(self, label_id: str, label_tag: str) -> None:
        if label_tag == FINAL_TAG:
            raise client_error(405, "submitted labels live in the archive as DICOM SEG: remove the SEG there")
        super().remove_label(label_id, label_tag)
