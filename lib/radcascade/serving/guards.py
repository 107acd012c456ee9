"""Checks every route runs on its input before any work or write, and the per-request temp folder.

Each check answers with a 4xx naming the problem (``client_error``), never lets a malformed value
reach code that would fail with a 500.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fastapi import UploadFile

from radcascade.serving.errors import as_http_errors, client_error
from radcascade.volume_headers import CHUNK, RawHeader, VolumeBudget, check_volume_file, volume_suffix

MAX_JSON_CHARS = 1 << 20
MAX_JSON_DEPTH = 32
SESSION_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def check_json_value(value: Any, field: str) -> Any:
    """Refuse JSON nested deeper than ``MAX_JSON_DEPTH`` (it is stored and re-serialised later)."""
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if depth > MAX_JSON_DEPTH:
            raise client_error(422, f"{field} is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, dict):
            todo.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            todo.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise client_error(422, f"{field} holds a non-finite number")
    return value


def json_object(text: str | None, field: str) -> dict:
    """A form field that must hold a JSON object (``""`` or absent = ``{}``)."""
    if text is None or not text.strip():
        return {}
    if len(text) > MAX_JSON_CHARS:
        raise client_error(413, f"{field} is longer than {MAX_JSON_CHARS} characters")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise client_error(422, f"{field} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as e:
        raise client_error(422, f"{field} is not valid JSON: {str(e)[:120]}") from None
    if not isinstance(value, dict):
        raise client_error(422, f"{field} must be a JSON object, not {type(value).__name__}")
    return check_json_value(value, field)


def body_object(value: dict | None, field: str = "request body") -> dict:
    """A JSON body parsed by FastAPI (already a dict or None): bounded nesting, finite numbers."""
    return {} if value is None else check_json_value(value, field)


def check_session_id(session_id: str) -> str:
    """Session ids are UUIDs: anything else is unknown (no path ever reaches the session store)."""
    if not SESSION_ID.match(session_id or ""):
        raise client_error(404, f"unknown session '{str(session_id)[:80]}'")
    return session_id


# -- uploads ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReceivedVolume:
    """An uploaded volume file, checked and saved in the request's temp folder."""

    path: Path
    header: RawHeader


class RequestFolder:
    """A private temp folder for one request's files, removed when the request ends."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="radcascade-request-"))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def receive(self, upload: UploadFile, field: str, budget: VolumeBudget,
                expected_size: tuple[int, ...] | None = None, subject: str | None = None) -> ReceivedVolume:
        """Save ``upload`` under a safe name with its volume suffix and check it while streaming
        (:func:`~radcascade.volume_headers.check_volume_file`); 415 for other file types.
        ``subject`` names the upload in errors the way the user knows it (default: the form field)."""
        subject = subject or field
        suffix = volume_suffix(upload.filename or "")
        if suffix is None:
            raise client_error(415, f"{subject}: unsupported file type '{Path(upload.filename or '').name[:80]}': "
                                    "send .nii.gz, .nii or .nrrd")
        path = self.path / f"{field}{suffix}"
        with open(path, "wb") as out:
            shutil.copyfileobj(upload.file, out, CHUNK)
        with as_http_errors(subject):
            header = check_volume_file(path, budget, name=subject, expected_size=expected_size)
        return ReceivedVolume(path, header)

    def receive_file(self, upload: UploadFile, name: str, max_bytes: int, subject: str) -> Path:
        """Save an upload that is not a volume (a DICOM SEG) as ``name``, refusing more than ``max_bytes``."""
        path = self.path / name
        written = 0
        with open(path, "wb") as out:
            while chunk := upload.file.read(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise client_error(413, f"{subject}: the file exceeds the limit of {max_bytes} bytes")
                out.write(chunk)
        return path


@contextlib.contextmanager
def request_folder() -> Iterator[RequestFolder]:
    folder = RequestFolder()
    try:
        yield folder
    finally:
        folder.remove()
