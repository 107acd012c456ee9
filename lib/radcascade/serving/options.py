"""Typed options of the train tasks: one dataclass per task, parsed once, one boolean parser.

The same object gives the defaults (from ``--conf``), the config Slicer shows in *Options* (a field
with choices is a drop-down, default first) and the parsed request.  Slicer sends a drop-down's
first item and an empty text field for an unset number; other clients may send the list itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, Mapping

import torch

from radcascade.backbones import BACKBONES
from radcascade.classifier import CLASSICAL, MODES
from radcascade.serving.errors import client_error
from radcascade.serving.slicer_view import first_of, options_with_choices

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
MAX_EPOCHS = 10_000


def parse_bool(value: Any, name: str = "value") -> bool:
    """``True``/``False``, 0/1 and the usual words; anything else is a client error."""
    value = first_of(value)
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise client_error(422, f"option '{name}': '{value}' is not a yes/no value")


def _coerce(name: str, kind: type, value: Any) -> Any:
    value = first_of(value)
    try:
        if kind is bool:
            return parse_bool(value, name)
        if kind is int:
            number = float(value)
            if number != int(number):
                raise ValueError("not a whole number")
            return int(number)
        if kind is float:
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError("not a finite number")
            return number
        return str(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise client_error(422, f"option '{name}': cannot read '{value}' as {kind.__name__} ({e})") from None


@dataclass(frozen=True)
class TaskOptions:
    """Base: parsing a request against typed defaults, and the Slicer-facing config."""

    choices: ClassVar[Mapping[str, tuple]] = {}

    def parse(self, request: Mapping[str, Any]):
        """These defaults overridden by the request's known fields (unknown fields are ignored: MONAI
        Label adds its own, e.g. ``model``, ``gpus``)."""
        given = {}
        for f in fields(self):
            if f.name in request and first_of(request[f.name]) not in (None, ""):
                given[f.name] = _coerce(f.name, type(getattr(self, f.name)), request[f.name])
        parsed = replace(self, **given)
        parsed.check()
        return parsed

    def check(self) -> None:
        for name, allowed in self.choices.items():
            if getattr(self, name) not in allowed:
                raise client_error(422, f"option '{name}': '{getattr(self, name)}' is not one of {', '.join(map(str, allowed))}")

    def config(self) -> dict[str, Any]:
        return options_with_choices(asdict(self), {k: list(v) for k, v in self.choices.items()})


def check_processes(cpu_processes: int) -> None:
    if not 1 <= cpu_processes <= 64:
        raise client_error(422, f"option 'cpu_processes': {cpu_processes} is outside 1..64")


def training_processes(multi_gpu: bool, cpu_processes: int) -> int:
    """How many processes a run with these options trains on: one per GPU, else ``cpu_processes``."""
    if not multi_gpu:
        return 1
    return torch.cuda.device_count() if torch.cuda.is_available() else cpu_processes


@dataclass(frozen=True)
class StageTrainOptions(TaskOptions):
    """``organ`` / ``lesion`` training (``max_minutes`` 0 = the server's hard limit)."""

    max_epochs: int = 30
    max_minutes: float = 20.0
    learning_rate: float = 1e-3
    val_split: float = 0.2
    warm_start: bool = True
    amp: bool = True
    seed: int = 0
    multi_gpu: bool = False  # one process per GPU (torch DDP); on a CPU-only server: cpu_processes (gloo)
    cpu_processes: int = 2

    def check(self) -> None:
        super().check()
        check_processes(self.cpu_processes)
        if not 1 <= self.max_epochs <= MAX_EPOCHS:
            raise client_error(422, f"option 'max_epochs': {self.max_epochs} is outside 1..{MAX_EPOCHS}")
        if not 0 <= self.val_split < 1:
            raise client_error(422, f"option 'val_split': {self.val_split} is outside [0, 1)")
        if self.learning_rate <= 0 or self.max_minutes < 0:
            raise client_error(422, "options 'learning_rate' must be > 0 and 'max_minutes' >= 0")


@dataclass(frozen=True)
class ClassifierTrainOptions(TaskOptions):
    """``classifier`` training: transfer mode, backbone, classical head, budget."""

    choices: ClassVar[Mapping[str, tuple]] = {"mode": MODES, "backbone": BACKBONES, "classical": CLASSICAL}

    mode: str = "auto"
    backbone: str = "efficientnet-lite0"
    weights: str = "imagenet"
    depth: str = "all"  # number of top blocks fine-tuned, or "all"
    classical: str = "logreg"
    max_epochs: int = 15
    learning_rate: float = 1e-3
    val_split: float = 0.25
    seed: int = 0
    multi_gpu: bool = False  # fine-tuning on one process per GPU (torch DDP); CPU-only: cpu_processes (gloo)
    cpu_processes: int = 2

    @property
    def depth_blocks(self) -> int | None:
        """``None`` for all blocks, else the number of top blocks."""
        if self.depth in ("", "all", "-1"):
            return None
        return int(_coerce("depth", int, self.depth))

    def check(self) -> None:
        super().check()
        check_processes(self.cpu_processes)
        if self.depth_blocks is not None and self.depth_blocks < 0:
            raise client_error(422, f"option 'depth': {self.depth} (a number of blocks, or 'all')")
        if not 1 <= self.max_epochs <= MAX_EPOCHS or not 0 <= self.val_split < 1:
            raise client_error(422, "options 'max_epochs' (1..10000) or 'val_split' ([0, 1)) out of range")
