"""Model files: atomic publishing, validated loading, and warm models that follow republishing.

A checkpoint is a ``torch.save`` of plain data (``weights_only`` loadable): the UNet spec, the
state dict, the stage's spacing and the training summary.  Publishing writes a temporary file in
the same folder, fsyncs it and renames it over the old one, so a reader (the server) sees either
the old complete model or the new complete model, never a half-written one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from radcascade.networks import UNetSpec

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A model file exists but cannot be used (corrupt, truncated, wrong format)."""


@dataclass
class Checkpoint:
    """What a model file holds."""

    spec: UNetSpec
    state_dict: dict
    spacing: tuple[float, float, float]
    summary: dict = field(default_factory=dict)

    def to_payload(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "state_dict": self.state_dict,
            "spacing": list(self.spacing),
            "summary": self.summary,
        }


def publish_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temporary file + fsync + rename)."""
    return atomic_torch_save(ckpt.to_payload(), path)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary file in ``path``'s folder, fsync, then rename it over ``path``.

    Readers see the old file or the whole new one, never half of it; on any error the temporary
    file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(payload: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(payload, f))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_model_temporaries(model_dir: str | os.PathLike, older_than_s: float = 3600) -> int:
    """Delete ``.<name>.*.tmp`` files that a killed publisher left in ``model_dir``.

    They are never loaded (the published name only ever points at a whole file), but each is a
    full model's worth of disk.  Only old ones go: a training run may be publishing right now.
    """
    removed = 0
    now = time.time()
    for f in Path(model_dir).glob(".*.tmp"):
        try:
            if f.is_file() and now - f.stat().st_mtime > older_than_s:
                f.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (readers never see half a file)."""
    write_text_atomic(path, json.dumps(obj, indent=1))


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and validate a model file. Raises :class:`CheckpointError` with a clear message."""
    path = Path(path)
    return parse_checkpoint(path.read_bytes(), path)


def parse_checkpoint(data: bytes, path: Path) -> Checkpoint:
    """Validate the bytes of a model file (``path`` only names it in messages)."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickle errors
        raise CheckpointError(f"model file {path} is corrupt or truncated ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"model file {path} is not a radcascade checkpoint (format {FORMAT_VERSION})")
    try:
        ckpt = Checkpoint(
            spec=UNetSpec.from_dict(payload["spec"]),
            state_dict=payload["state_dict"],
            spacing=tuple(float(s) for s in payload["spacing"]),
            summary=dict(payload.get("summary") or {}),
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
