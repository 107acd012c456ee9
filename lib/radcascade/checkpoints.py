"""Model files: one format for every model, atomic publishing, validated loading, and warm models
that follow republishing.

Every model file (the organ and lesion UNets, every classifier including the radiomics ones) is a
``torch.save`` of plain data (``weights_only`` loadable) written by :func:`save_model_file` and read
by :func:`load_model_payload`: ``{"format": FORMAT_VERSION, "kind": "unet" | "classifier", ...}``
plus the kind's own fields.  Files written before this scheme are read as legacy versions (see
:data:`LEGACY_FORMATS`).  Publishing is atomic (:mod:`radcascade.files`): a reader (the server)
sees either the old complete model or the new complete model, never a half-written one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from radcascade.files import atomic_write, remove_stale_temporaries, write_json_atomic, write_text_atomic
from radcascade.networks import UNetSpec
from radcascade.preprocessing import HU_WINDOW, valid_window

__all__ = ["atomic_write", "remove_stale_temporaries", "write_json_atomic", "write_text_atomic"]  # re-exported

logger = logging.getLogger(__name__)
FORMAT_VERSION = 2
MODEL_KINDS = ("unet", "classifier")
# Formats of files written before version 2, read as the kind they always held: UNet files had the
# integer format 1 and no kind; classifier files the string below.  Both are otherwise the same.
LEGACY_FORMATS: dict[int | str, str] = {1: "unet", "radcascade-classifier-1": "classifier"}


class CheckpointError(RuntimeError):
    """A model file exists but cannot be used (corrupt, truncated, wrong format)."""


def save_model_file(kind: str, body: dict, path: str | os.PathLike) -> Path:
    """Publish a model file of ``kind`` (fields ``body``) atomically, stamped with the format version."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind '{kind}' (one of {MODEL_KINDS})")
    return atomic_torch_save({"format": FORMAT_VERSION, "kind": kind, **body}, path)


def model_file_kind(payload: Any) -> str | None:
    """The kind of model a loaded payload holds (current or legacy format), or None if it is none."""
    if not isinstance(payload, dict):
        return None
    fmt = payload.get("format")
    if type(fmt) is int and fmt == FORMAT_VERSION:
        kind = payload.get("kind")
        return kind if kind in MODEL_KINDS else None
    return next((k for f, k in LEGACY_FORMATS.items() if type(fmt) is type(f) and fmt == f), None)


def load_model_payload(data: bytes, path: str | os.PathLike, kind: str) -> dict:
    """The fields of a model file of ``kind`` (``path`` only names it in messages).

    Raises :class:`CheckpointError` for corrupt bytes, another format or another kind of model."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickle errors
        raise CheckpointError(f"model file {path} is corrupt or truncated ({type(e).__name__}: {str(e)[:120]})") from None
    found = model_file_kind(payload)
    if found is None:
        raise CheckpointError(f"model file {path} is not a radcascade model file (format {FORMAT_VERSION})")
    if found != kind:
        raise CheckpointError(f"model file {path} holds a {found} model, not a {kind} model")
    return payload


@dataclass
class Checkpoint:
    """What a UNet stage's model file holds."""

    spec: UNetSpec
    state_dict: dict
    spacing: tuple[float, float, float]
    summary: dict = field(default_factory=dict)
    # The CT window the network's input was clipped and scaled with; files written before windows were
    # recorded were all trained with the default one.
    hu_window: tuple[float, float] = HU_WINDOW

    def to_body(self) -> dict:
        return {
            "spec": self.spec.to_dict(),
            "state_dict": self.state_dict,
            "spacing": list(self.spacing),
            "hu_window": list(self.hu_window),
            "summary": self.summary,
        }


def publish_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temporary file + fsync + rename)."""
    return save_model_file("unet", ckpt.to_body(), path)


def atomic_torch_save(payload: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(payload, f))


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and validate a model file. Raises :class:`CheckpointError` with a clear message."""
    path = Path(path)
    return parse_checkpoint(path.read_bytes(), path)


def parse_checkpoint(data: bytes, path: Path) -> Checkpoint:
    """Validate the bytes of a UNet model file (``path`` only names it in messages)."""
    payload = load_model_payload(data, path, "unet")
    try:
        ckpt = Checkpoint(
            spec=UNetSpec.from_dict(payload["spec"]),
            state_dict=payload["state_dict"],
            spacing=tuple(float(s) for s in payload["spacing"]),
            summary=dict(payload.get("summary") or {}),
            hu_window=valid_window(payload.get("hu_window", HU_WINDOW)),
        )
        ckpt.spec.build().load_state_dict(ckpt.state_dict)
    except Exception as e:
        raise CheckpointError(f"model file {path} does not match its network description ({str(e)[:160]})") from None
    return ckpt


@dataclass
class LoadedModel:
    """A network on its device, in eval mode, with the checkpoint it came from."""

    network: torch.nn.Module
    checkpoint: Any  # Checkpoint, or the classifier's checkpoint; both carry ``summary``
    file_stamp: tuple
    digest: str  # sha256 prefix of the file: which weights answered a request


def load_unet(data: bytes, path: Path, device: torch.device) -> tuple[torch.nn.Module, Checkpoint]:
    """Loader of UNet stage files for :class:`WarmModel`."""
    ckpt = parse_checkpoint(data, path)
    net = ckpt.spec.build()
    net.load_state_dict(ckpt.state_dict)
    return net.to(device).eval(), ckpt


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class WarmModel:
    """Keeps a model loaded; reloads only when the file on disk was republished.

    ``get()`` costs one ``stat`` per request.  A corrupt file never replaces a good loaded model;
    with no usable model at all ``get()`` returns ``None`` and :attr:`problem` says why.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device,
                 loader: Callable[[bytes, Path, torch.device], tuple[torch.nn.Module, Any]] = load_unet):
        self.path = Path(path)
        self.device = device
        self.loader = loader
        self._lock = threading.Lock()
        self._loaded: LoadedModel | None = None
        self._bad_stamp: tuple | None = None
        self.problem: str | None = None

    def get(self) -> LoadedModel | None:
        stamp = _stamp(self.path)
        loaded = self._loaded
        if loaded is not None and loaded.file_stamp == stamp:
            return loaded
        with self._lock:
            stamp = _stamp(self.path)
            if self._loaded is not None and self._loaded.file_stamp == stamp:
                return self._loaded
            if stamp is None:
                self.problem = f"no trained model at {self.path}"
                return self._loaded
            if stamp == self._bad_stamp:
                return self._loaded
            try:
                data = self.path.read_bytes()
                net, ckpt = self.loader(data, self.path, self.device)
            except (CheckpointError, FileNotFoundError) as e:
                self._bad_stamp = stamp
                self.problem = str(e)
                logger.error("%s; %s", e, "keeping the previous model" if self._loaded else "stage is untrained")
                return self._loaded
            self._loaded = LoadedModel(net, ckpt, stamp, hashlib.sha256(data).hexdigest()[:16])
            self.problem = None
            logger.info("loaded %s (%s)", self.path.name, ckpt.summary.get("trained_at", "unknown date"))
            return self._loaded

    def version(self) -> str | None:
        """Digest of the weights in use, or None when untrained."""
        loaded = self.get()
        return loaded.digest if loaded else None

    def status(self) -> str:
        """A one-line honest description for ``/info``."""
        loaded = self.get()
        if loaded is None:
            return f"UNTRAINED: {self.problem}"
        s = loaded.checkpoint.summary
        if "trained_at" not in s and s.get("averaged_from"):  # radcascade.weight_averaging: no run of its own
            text = f"mean of the weights of {len(s['averaged_from'])} models"
            text += f", averaged {s['averaged_at']}" if s.get("averaged_at") else ""
        else:
            text = f"trained {s.get('trained_at', '?')}"
        if s.get("best_dice") is not None:
            text += f", validation Dice {s['best_dice']:.3f}"
        if s.get("val_auc") is not None:
            text += f", validation AUC {s['val_auc']:.3f}"
        if s.get("mode"):
            text += f" ({s['mode']}{', depth ' + str(s['depth']) if s.get('depth') is not None else ''})"
        if self.problem:
            text += f" (newer file rejected: {self.problem})"
        return text


class FixedModel:
    """A network held in memory (e.g. one being trained) offered the way :class:`WarmModel` offers a
    published file, so the served stages can run it unchanged (training validates through them)."""

    problem: str | None = None

    def __init__(self, network: torch.nn.Module, checkpoint: Any, name: str = "in training"):
        self._loaded = LoadedModel(network, checkpoint, (), name)

    def get(self) -> LoadedModel:
        return self._loaded

    def version(self) -> str:
        return self._loaded.digest

    def status(self) -> str:
        return self._loaded.digest
