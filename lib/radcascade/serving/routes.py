"""The routes the server serves: MONAI Label's REST API as 3D Slicer uses it, with the app's guarantees.

MONAI Label 0.8.5 serves some 45 routes; their handlers trust their input (a form field that is
not JSON, a path where an image id belongs, a tar member named ``../x``) and several end in a 500.
At start-up :func:`install_routes` replaces them. Served, with MONAI Label's paths, parameters and
answers (so ``MONAILabelClient`` and the Slicer module work unchanged):

* ``GET /info/``, ``/auth/...`` (when auth is on) and the API pages (``/``, ``/docs``, ``/openapi.json``):
  MONAI Label's own handlers (they take no input);
* ``POST /activelearning/{strategy}``;
* ``/datastore/``: ``GET /``, ``PUT /`` and ``/image``, ``DELETE /image``, ``HEAD``/``GET /image``,
  ``GET``/``PUT /image/info``, ``PUT``/``DELETE``/``HEAD``/``GET /label``, ``GET``/``PUT /label/info``;
* ``POST /infer/{model}`` (this app's models only);
* ``PUT /session/``, ``GET``/``DELETE /session/{session_id}``;
* ``GET``/``DELETE /train/``, ``POST /train/{model}``; ``GET``/``DELETE /scoring/``, ``POST /scoring/{method}``.

Everything else answers 404. ``--conf stock_routes model,logs`` serves those MONAI Label route
groups again (see :data:`STOCK_GROUPS`), as MONAI Label wrote them: without these guarantees.

Every served route checks its input before any work or write and answers a 4xx whose ``detail``
names the problem (all declared in the published OpenAPI schema); an unexpected failure is logged
and answered with a plain 500 (the connection stays open), never a stack trace.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from enum import Enum
from pathlib import Path
from typing import Callable, List, Optional

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.exception import MONAILabelException
from monailabel.utils.async_tasks.task import AsyncTask
from monailabel.utils.async_tasks.utils import processes, stop_background_task, tasks
from pydantic import BaseModel
from requests_toolbelt import MultipartEncoder
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount, Route

from radcascade.serving.archive import DICOM_SUFFIXES, ArchiveDatastore
from radcascade.serving.datastore import check_id
from radcascade.serving.errors import as_http_errors, client_error
from radcascade.serving.guards import (
    RequestFolder,
    body_object,
    check_session_id,
    json_object,
    request_folder,
)
from radcascade.serving.results import discard
from radcascade.serving.scoring import INFO_KEY as SCORE_KEY
from radcascade.serving.train_queue import TrainPolicy, TrainQueue, check_train_options
from radcascade.volume_headers import VolumeBudget, volume_suffix
from radcascade.volumes import read_geometry, read_image

logger = logging.getLogger(__name__)

USER = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
ANNOTATOR = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
ADMIN = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))

# MONAI Label route groups that are off unless named in ``--conf stock_routes`` (unguarded when on).
STOCK_GROUPS = {
    "model": "Download / upload / delete model files (/model)",
    "logs": "Server log and nvidia-smi (/logs)",
    "batch": "Batch inference (/batch)",
    "wsi": "Whole-slide inference (/infer/wsi, /infer/wsi_v2)",
    "ohif": "OHIF viewer files (/ohif)",
    "proxy": "DICOMweb proxy (/proxy)",
    "dataset": "Whole datastore as a ZIP (/datastore/dataset)",
    "static": "Static files (/static)",
    "reload": "Reload the app (/reload)",
}
KEPT_APP_PATHS = {"/", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/favicon.ico"}
INFER_RESERVED = ("image", "image_id", "model", "label", "file", "session", "session_id", "save_label", "label_tag",
                  "description", "device")
IMAGE_INFO_RESERVED = ("name", "ts", "path", "ext", "strategy", SCORE_KEY)  # kept by the server and its strategies
LABEL_INFO_RESERVED = ("name", "ts", "path", "ext", "label_info", "submitted_label_info", "ignored_label_info",
                       "label_counts")
CHECKSUM_ALGORITHMS = ("SHA256", "SHA512", "SHA1", "MD5")


class ErrorDetail(BaseModel):
    """Every refusal: ``{"detail": "what is wrong"}``."""

    detail: str


ERRORS = {
    code: {"model": ErrorDetail, "description": text}
    for code, text in {
        400: "Malformed request (e.g. a broken multipart body)",
        401: "Not authenticated (auth enabled)",
        403: "Not allowed for this user's role (auth enabled)",
        404: "Unknown model, strategy, image, label, session or task",
        409: "Conflicts with what is stored",
        413: "Too large: request body, upload once inflated, or voxel count",
        415: "Unsupported file type",
        422: "Invalid input: the detail names the field and the problem",
        429: "Busy: queue full (see Retry-After)",
        503: "Waited too long for an inference slot, or a model is not trained yet (see Retry-After)",
    }.items()
}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
FILE_ANSWER = {200: {"description": "The file", "content": {"application/octet-stream": _BINARY}}}
INFER_ANSWER = {200: {"description": "The label image and the result (multipart), or either alone (output=)",
                      "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
                          "params": {"type": "string"}, "image": {"type": "string", "format": "binary"}}}},
                                  "application/octet-stream": _BINARY}}}


def _describe(errors: list) -> str:
    parts = []
    for e in errors[:5]:
        where = " ".join(str(p) for p in e.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


class GuardedRoute(APIRoute):
    """A route whose failures are answers: validation errors become a 422 with a readable
    ``detail`` string, and a bug a logged 500 (the connection stays open)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as e:
                detail = _describe(e.errors())
                logger.warning("refused request (422): %s", detail)
                return JSONResponse({"detail": detail}, status_code=422)
            except StarletteHTTPException:  # FastAPI's and Starlette's own (e.g. a malformed multipart body)
                raise
            except MONAILabelException as e:
                logger.warning("refused request (422): %s", e.msg)
                return JSONResponse({"detail": str(e.msg)}, status_code=422)
            except Exception:
                logger.exception("internal error on %s %s", request.method, request.url.path)
                return JSONResponse({"detail": "internal server error (see the server log)"}, status_code=500)

        return guarded


class ResultType(str, Enum):
    image = "image"
    json = "json"
    all = "all"
    dicom_seg = "dicom_seg"


class DatastoreView(str, Enum):
    train = "train"
    stats = "stats"
    all = "all"


def _remove(path: str | os.PathLike | None) -> None:
    discard(path)  # an answer file goes with its private folder


def _file_response(path: str) -> FileResponse:
    return FileResponse(path, media_type="application/octet-stream", filename=os.path.basename(path))


class ServedRoutes:
    """The handlers, bound to the running app instance."""

    def __init__(self, instance, image_budget: VolumeBudget, train_policy: TrainPolicy):
        self.instance = instance
        self.image_budget = image_budget
        self.train = TrainQueue(train_policy, lambda: tasks("train"), lambda: processes("train"),
                                lambda: stop_background_task("train"))

    # -- helpers ---------------------------------------------------------------------------------
    def _datastore(self):
        return self.instance.datastore()

    def _image_path(self, image_id: str) -> str:
        uri = self._datastore().require_image(check_id("image id", image_id))
        if not os.path.exists(uri):
            raise client_error(404, f"unknown image id '{image_id}'")
        return uri

    def _label_path(self, image_id: str, tag: str) -> str:
        uri = self._datastore().get_label_uri(check_id("image id", image_id), check_id("label tag", tag))
        if not uri or not os.path.isfile(uri):
            raise client_error(404, f"no label '{tag}' for image '{image_id}'")
        return uri

    def _label_budget(self) -> VolumeBudget:
        return VolumeBudget(self.image_budget.max_voxels)  # inflated size is bounded by the image's geometry

    @staticmethod
    def _reserved(params: dict, reserved: tuple[str, ...], field: str) -> dict:
        clash = sorted(set(params) & set(reserved))
        if clash:
            raise client_error(422, f"{field} may not set {', '.join(clash)} (set by the server)")
        return params

    # -- active learning ---------------------------------------------------------------------------
    def next_sample(self, strategy: str, params: Optional[dict] = None, user: User = USER):
        params = body_object(params)
        config = self.instance.info().get("config", {}).get("activelearning", {})
        result = self.instance.next_sample({**config, **params, "strategy": strategy})
        if not result:
            return {}
        datastore = self._datastore()
        image_info = datastore.get_image_info(result["id"])
        seen = dict(image_info.get("strategy") or {})
        client = params.get("client_id", getattr(user, "username", None))
        client = client if client is None or isinstance(client, str) else str(client)
        seen[strategy] = {"ts": int(time.time()), "client_id": client[:128] if client else client}
        datastore.update_image_info(result["id"], {"strategy": seen})
        return {**result, **image_info}

    # -- datastore ---------------------------------------------------------------------------------
    def datastore(self, output: Optional[DatastoreView] = None, user: User = USER):
        d = self._datastore()
        if output == DatastoreView.all:
            return d.json()
        if output == DatastoreView.train:
            return d.datalist()
        return d.status()

    def add_image(self, image: Optional[str] = None, params: str = Form("{}"), file: UploadFile = File(...),
                  user: User = ANNOTATOR):
        info = json_object(params, "params")
        name = Path(file.filename or "").name
        suffix = volume_suffix(name) or ""
        image_id = check_id("image id", image or name[: len(name) - len(suffix)])
        if user is not None and getattr(user, "username", None):
            info["user"] = user.username
        with request_folder() as folder:
            received = folder.receive(file, "file", self.image_budget, subject=f"image '{image_id}'")
            return {"image": self._datastore().add_image(image_id, str(received.path), info)}

    def remove_image(self, id: str, user: User = ADMIN):
        self._datastore().remove_image(check_id("image id", id))
        return {}

    def check_image(self, image: str, check_sum: Optional[str] = None, user: User = USER):
        path = self._image_path(image)
        if check_sum:
            algo, _, digest = check_sum.rpartition(":")
            algo = (algo or "SHA256").upper()
            if algo not in CHECKSUM_ALGORITHMS:
                raise client_error(422, f"check_sum algorithm '{algo[:20]}' is not one of {', '.join(CHECKSUM_ALGORITHMS)}")
            h = hashlib.new(algo.lower())
            with open(path, "rb") as f:
                while piece := f.read(1 << 20):
                    h.update(piece)
            if h.hexdigest() != digest.lower():
                raise client_error(404, f"image '{image}' has another checksum")
        return {}

    def download_image(self, image: str, user: User = USER):
        return _file_response(self._image_path(image))

    def image_info(self, image: str, user: User = USER):
        self._image_path(image)
        return self._datastore().get_image_info(image)

    def update_image_info(self, image: str, info: str = Form("{}"), user: User = ANNOTATOR):
        values = self._reserved(json_object(info, "info"), IMAGE_INFO_RESERVED, "info")
        self._image_path(image)
        self._datastore().update_image_info(image, values)
        return self._datastore().get_image_info(image)

    def save_label(self, image: str, params: str = Form("{}"), tag: str = "final", label: UploadFile = File(...),
                   user: User = ANNOTATOR):
        tag = check_id("label tag", tag or "final")
        info = json_object(params, "params")
        image_path = self._image_path(image)
        with as_http_errors(f"image '{image}'"):
            size = read_geometry(image_path).size
        with request_folder() as folder:
            store = self._datastore()
            if isinstance(store, ArchiveDatastore) and (label.filename or "").lower().endswith(DICOM_SUFFIXES):
                # a DICOM SEG of the study's series (archive studies); bounded like a one-byte label map
                received_path = folder.receive_file(label, "label.dcm", math.prod(size) + (1 << 24),
                                                    subject=f"label for '{image}'")
            else:
                received_path = folder.receive(label, "label", self._label_budget(), expected_size=size,
                                               subject=f"label for '{image}'").path
            label_id = store.save_label(image, str(received_path), tag, info)
        return {**(self.instance.on_save_label(image, label_id) or {}), "image": image, "label": label_id}

    def remove_label(self, id: str, tag: str, user: User = ADMIN):
        self._datastore().remove_label(check_id("image id", id), check_id("label tag", tag))
        return {}

    def check_label(self, image: str, tag: str, user: User = USER):
        self._label_path(image, tag)
        return {}

    def download_label(self, label: str, tag: str, user: User = USER):
        return _file_response(self._label_path(label, tag))

    def label_info(self, label: str, tag: str, user: User = USER):
        self._label_path(label, tag)
        return self._datastore().get_label_info(label, tag)

    def update_label_info(self, label: str, tag: str, info: str = Form("{}"), user: User = ANNOTATOR):
        values = self._reserved(json_object(info, "info"), LABEL_INFO_RESERVED, "info")
        self._label_path(label, tag)
        self._datastore().update_label_info(label, tag, values)
        return self._datastore().get_label_info(label, tag)

    # -- inference ---------------------------------------------------------------------------------
    def infer(self, model: str, image: str = "", session_id: str = "", params: str = Form("{}"),
              file: UploadFile = File(None), label: UploadFile = File(None), output: Optional[ResultType] = None,
              user: User = USER):
        if model not in self.instance._infers:
            raise client_error(404, f"unknown model '{model}' (this app serves: {', '.join(self.instance._infers)})")
        options = self._reserved(json_object(params, "params"), INFER_RESERVED, "params")
        if output == ResultType.dicom_seg and not (image and isinstance(self._datastore(), ArchiveDatastore)):
            raise client_error(422, "output=dicom_seg needs a study of a DICOMweb archive (--studies http://.../dicom-web); "
                                    "use image, json or all")
        with request_folder() as folder:
            request = {**self.instance.info().get("config", {}).get("infer", {}), **options, "model": model}
            request.update(self._infer_source(folder, image, session_id, file))
            if label is not None:
                with as_http_errors("image"):
                    size = read_geometry(request["image"]).size
                request["label"] = str(folder.receive(label, "label", self._label_budget(), expected_size=size,
                                                      subject="uploaded label").path)
            with self.instance.admission.admit():
                result = self.instance.infer(request)
            if output == ResultType.dicom_seg:
                return self._seg_response(result or {}, image)
            return self._infer_response(result or {}, output)

    def _seg_response(self, result: dict, image_id: str) -> Response:
        """The result as a DICOM SEG of the study's series (MONAI Label's ``output=dicom_seg``)."""
        path = result.get("file") or result.get("label")
        if not (isinstance(path, str) and os.path.isfile(path)):
            raise client_error(404, "the model returned no label image")
        try:
            seg = self._datastore().result_seg(image_id, path, (result.get("params") or {}).get("label_names"))
        finally:
            _remove(path)
        buffer = io.BytesIO()
        seg.save_as(buffer, write_like_original=False)
        return Response(buffer.getvalue(), media_type="application/dicom",
                        headers={"Content-Disposition": f'attachment; filename="{image_id}-seg.dcm"'})

    def _infer_source(self, folder: RequestFolder, image: str, session_id: str, file: UploadFile | None) -> dict:
        """Where the image comes from: a session, an uploaded file, or a datastore image id (never a path)."""
        if session_id:
            sessions = self.instance.sessions()
            session = sessions.get_session(check_session_id(session_id)) if sessions else None
            if not session:
                raise client_error(404, f"unknown session '{session_id[:80]}'")
            return {"image": session.image, "session": session.to_json()}
        if file is not None:
            return {"image": str(folder.receive(file, "file", self.image_budget, subject="uploaded image").path)}
        if not image:
            raise client_error(422, "no image: send ?image=<datastore id>, a session_id, or a file")
        return {"image": self._image_path(image), "image_id": image}

    @staticmethod
    def _infer_response(result: dict, output: Optional[ResultType]) -> Response:
        """MONAI Label's answer shapes; the result file never outlives the response."""
        path = result.get("file") or result.get("label")
        path = path if isinstance(path, str) and os.path.isfile(path) else None
        params = result.get("params") or {}
        if output == ResultType.image:
            if path is None:
                raise client_error(404, "the model returned no label image")
            return FileResponse(path, media_type="application/octet-stream", filename=os.path.basename(path),
                                background=BackgroundTask(_remove, path))
        try:
            if output == ResultType.json or path is None:
                return JSONResponse(json.loads(json.dumps(params, default=str)))
            with open(path, "rb") as f:
                encoder = MultipartEncoder(fields={
                    "params": (None, json.dumps(params, default=str), "application/json"),
                    "image": (os.path.basename(path), f, "application/octet-stream"),
                })
                body = encoder.to_string()
            return Response(content=body, media_type=encoder.content_type)
        finally:
            _remove(path)

    # -- sessions ----------------------------------------------------------------------------------
    def _sessions(self):
        sessions = self.instance.sessions()
        if sessions is None:
            raise client_error(404, "sessions are turned off on this server")
        return sessions

    def create_session(self, uncompress: bool = False, expiry: int = 0, files: List[UploadFile] = File(...),
                       user: User = USER):
        sessions = self._sessions()
        if uncompress:
            raise client_error(422, "archives are not accepted (uncompress=true): send the volume file itself")
        if len(files) != 1:
            raise client_error(422, f"send exactly one volume file ({len(files)} sent)")
        if not 0 <= expiry <= 7 * 24 * 3600:
            raise client_error(422, f"expiry {expiry} must lie in 0..{7 * 24 * 3600} seconds")
        with request_folder() as folder:
            received = folder.receive(files[0], "image", self.image_budget, subject="session image")
            with as_http_errors("session image"):
                read_image(received.path, self.image_budget.max_voxels)
            session_id, info = sessions.add_session(str(received.path), expiry)
        return {"session_id": session_id, "session_info": info.to_json()}

    def get_session(self, session_id: str, update_ts: bool = False, image: bool = False, user: User = USER):
        info = self._sessions().get_session(check_session_id(session_id), update_ts=update_ts)
        if not info:
            raise client_error(404, f"unknown session '{session_id[:80]}'")
        return _file_response(info.image) if image else info.to_json()

    def remove_session(self, session_id: str, user: User = USER):
        sessions = self._sessions()
        info = sessions.get_session(check_session_id(session_id))
        if not info:
            raise client_error(404, f"unknown session '{session_id[:80]}'")
        sessions.remove_session(session_id)
        return info.to_json()

    # -- training and scoring ----------------------------------------------------------------------
    @staticmethod
    def _status(method: str, all: bool, check_if_running: bool):
        res, detail = AsyncTask.status(method, all, check_if_running)
        if res is None:
            raise client_error(404, detail)
        return res

    def train_status(self, all: bool = False, check_if_running: bool = False, user: User = USER):
        return self._status("train", all, check_if_running)

    def train_run(self, model: str, params: Optional[dict] = None, run_sync: bool = False, enqueue: bool = False,
                  user: User = ADMIN):
        trainer = self.instance._trainers.get(model)
        if trainer is None:
            raise client_error(404, f"unknown train task '{model}' (available: {', '.join(self.instance._trainers)})")
        known = trainer.config()
        options = check_train_options(known, {k: v for k, v in body_object(params).items() if k in known},
                                      self.train.policy)
        if run_sync:
            with as_http_errors():
                return self.train.run_sync(lambda: self.instance.train({**options, "model": model}))

        def submit():
            res, detail = AsyncTask.run("train", request={"model": model}, params=options, enqueue=True)
            if res is None:
                raise client_error(429, detail)
            return res

        return self.train.start(enqueue, submit)

    def train_stop(self, user: User = ADMIN):
        return self.train.stop_all()

    def scoring_status(self, all: bool = False, check_if_running: bool = False, user: User = USER):
        return self._status("scoring", all, check_if_running)

    def scoring_run(self, method: str, params: Optional[dict] = None, run_sync: bool = False, user: User = ANNOTATOR):
        if method not in self.instance._scoring_methods:
            raise client_error(404, f"unknown scoring method '{method}' (available: "
                                    f"{', '.join(self.instance._scoring_methods)})")
        options = {k: v for k, v in body_object(params).items() if k != "method"}
        if run_sync:
            with as_http_errors():
                return self.instance.scoring({**options, "method": method})
        res, detail = AsyncTask.run("scoring", request={"method": method}, params=options)
        if res is None:
            raise HTTPException(status_code=429, detail=detail, headers={"Retry-After": "30"})
        return res

    def scoring_stop(self, user: User = ANNOTATOR):
        return AsyncTask.stop("scoring") or {}

    # -- the routers -------------------------------------------------------------------------------
    def routers(self, max_upload_bytes: int) -> list[APIRouter]:
        def router(prefix: str, tag: str, max_body: int, **limits) -> APIRouter:
            return APIRouter(prefix=prefix, tags=[tag], route_class=GuardedRoute, responses=ERRORS,
                             max_body_size=max_body, form_limits=limits or None)

        small = 1 << 20
        upload_limits = {"max_fields": 8, "max_files": 2, "max_part_size": 1 << 20}
        al = router("/activelearning", "ActiveLearning", small)
        al.add_api_route("/{strategy}", self.next_sample, methods=["POST"], summary="Next study to label")

        ds = router("/datastore", "Datastore", max_upload_bytes, **upload_limits)
        ds.add_api_route("/", self.datastore, methods=["GET"], summary="Images and labels in the datastore")
        ds.add_api_route("/image", self.add_image, methods=["PUT"], summary="Upload an image (checked before stored)")
        ds.add_api_route("/", self.add_image, methods=["PUT"], include_in_schema=False)  # what Slicer calls
        ds.add_api_route("/image", self.remove_image, methods=["DELETE"],
                         summary="Remove an image and its labels (set aside under .radcascade/removed)")
        ds.add_api_route("/image", self.check_image, methods=["HEAD"], summary="Does the image exist")
        ds.add_api_route("/image", self.download_image, methods=["GET"], summary="Download an image",
                         responses=FILE_ANSWER)
        ds.add_api_route("/image/info", self.image_info, methods=["GET"], summary="Image info")
        ds.add_api_route("/image/info", self.update_image_info, methods=["PUT"], summary="Update image info")
        ds.add_api_route("/label", self.save_label, methods=["PUT"], summary="Submit a label (label_info maps by name)")
        ds.add_api_route("/label", self.remove_label, methods=["DELETE"],
                         summary="Remove a label (kept in label history)")
        ds.add_api_route("/label", self.check_label, methods=["HEAD"], summary="Does the label exist")
        ds.add_api_route("/label", self.download_label, methods=["GET"], summary="Download a label",
                         responses=FILE_ANSWER)
        ds.add_api_route("/label/info", self.label_info, methods=["GET"], summary="Label info")
        ds.add_api_route("/label/info", self.update_label_info, methods=["PUT"], summary="Update label info")

        inf = router("/infer", "Infer", max_upload_bytes, **upload_limits)
        inf.add_api_route("/{model}", self.infer, methods=["POST"], summary="Run a model on a datastore image, "
                          "a session or an uploaded file", responses=INFER_ANSWER)

        ses = router("/session", "Session", max_upload_bytes, max_fields=8, max_files=1, max_part_size=1 << 20)
        ses.add_api_route("/", self.create_session, methods=["PUT"], summary="New session with one volume file")
        ses.add_api_route("/{session_id}", self.get_session, methods=["GET"], summary="Session info (or its image)",
                          responses=FILE_ANSWER)
        ses.add_api_route("/{session_id}", self.remove_session, methods=["DELETE"], summary="Remove a session")

        tr = router("/train", "Train", small)
        tr.add_api_route("/", self.train_status, methods=["GET"], summary="Training status")
        tr.add_api_route("/{model}", self.train_run, methods=["POST"],
                         summary="Train a model (bounded queue, hard time limit)")
        tr.add_api_route("/", self.train_stop, methods=["DELETE"], summary="Stop training, queued runs included")

        sc = router("/scoring", "Scoring", small)
        sc.add_api_route("/", self.scoring_status, methods=["GET"], summary="Scoring status")
        sc.add_api_route("/{method}", self.scoring_run, methods=["POST"], summary="Run a scoring method")
        sc.add_api_route("/", self.scoring_stop, methods=["DELETE"], summary="Stop scoring")
        return [al, ds, inf, ses, tr, sc]


def parse_stock_groups(value: str | None) -> list[str]:
    groups = [g.strip() for g in (value or "").split(",") if g.strip()]
    unknown = [g for g in groups if g not in STOCK_GROUPS]
    if unknown:
        raise ValueError(f"unknown stock_routes group(s) {unknown}; known: {', '.join(STOCK_GROUPS)}")
    return groups


def _stock_routers(groups: list[str]) -> list[APIRouter]:
    """MONAI Label's own routers for the route groups a user turned back on."""
    from monailabel.endpoints import batch_infer, datastore, logs, model, ohif, proxy, wsi_infer

    modules = {"model": model, "logs": logs, "batch": batch_infer, "wsi": wsi_infer, "ohif": ohif, "proxy": proxy}
    out = [modules[g].router for g in groups if g in modules]
    if "dataset" in groups:
        dataset = APIRouter()
        dataset.routes.extend(r for r in datastore.router.routes if getattr(r, "path", "") == "/datastore/dataset")
        out.append(dataset)
    return out


def install_routes(app, routes: ServedRoutes, stock_groups: list[str], max_upload_bytes: int) -> list[str]:
    """Serve :class:`ServedRoutes` (and the kept MONAI Label routes) and nothing else; the paths served."""
    from monailabel.endpoints import info, login

    keep = set(KEPT_APP_PATHS)
    keep |= {"/static"} if "static" in stock_groups else set()
    keep |= {"/reload"} if "reload" in stock_groups else set()
    app.router.routes[:] = [r for r in app.router.routes
                            if isinstance(r, (Route, Mount)) and getattr(r, "path", None) in keep]
    prefix = settings.MONAI_LABEL_API_STR
    app.include_router(info.router, prefix=prefix)
    if settings.MONAI_LABEL_AUTH_ENABLE:
        app.include_router(login.router, prefix=prefix)
    for router in routes.routers(max_upload_bytes):
        app.include_router(router, prefix=prefix)
    for router in _stock_routers(stock_groups):
        app.include_router(router, prefix=prefix)
    app.openapi_schema = None
    routes.train.start_watchdog()
    return [f"{m.upper()} {p}" for p, ops in app.openapi()["paths"].items() for m in ops]
