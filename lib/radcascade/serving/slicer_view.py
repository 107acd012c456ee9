"""What 3D Slicer's MONAI Label module reads from ``/info``, made readable at every moment.

The module (``plugins/slicer/MONAILabel/MONAILabel.py`` in MONAI Label) does more with ``/info`` than
``MONAILabelClient`` does, and some of it raises on values a trainer writes honestly:

* it takes the **first** ``train_stats`` entry only, for the accuracy bar (``best_metric * 100`` and
  ``f"{best_metric:.4f}"``: ``None`` raises a TypeError that leaves the whole panel frozen) and for
  the training progress bar (``0 if total_time else epoch`` over ``total_epochs``);
* it lists in *Options* only entries with a non-empty ``config``; a list value becomes a drop-down
  and only its first item is sent; an ``int`` default forces ``int(text)`` on what the user types.

:func:`slicer_train_stats` turns each trainer's raw statistics into that shape (numbers always
numbers, ``total_time`` only once a run has ended) and puts the trainer that is running, or else the
one that ran last, first.  The raw statistics stay available under ``train_details``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

NO_VALIDATION_NOTE = ("no validation studies (fewer than 3 labelled studies, or val_split 0): the accuracy "
                      "bar shows 0 until a run validates")


@dataclass(frozen=True)
class TrainerState:
    """A trainer's raw statistics and when they were last written (0 when never)."""

    name: str
    stats: Mapping[str, Any]
    updated: float
    metric_name: str


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any, default: int) -> int:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else default


def slicer_stats(state: TrainerState, running: bool) -> dict[str, Any]:
    """One trainer's statistics in the shape the module reads, with nothing it cannot format."""
    raw = dict(state.stats)
    metric = _number(raw.get("best_metric"))
    total = max(1, _count(raw.get("total_epochs"), 1))
    epoch = min(_count(raw.get("epoch", raw.get("epochs_done")), 0), total)
    status = "RUNNING" if running else str(raw.get("status") or ("DONE" if raw else "NOT TRAINED"))
    if status == "RUNNING" and not running:
        status = "INTERRUPTED"  # a stats file left RUNNING by a run that no longer exists
    out: dict[str, Any] = {
        "trainer": state.name,
        "status": status,
        "epoch": epoch,
        "total_epochs": total,
        "best_metric": round(metric, 5) if metric is not None else 0.0,
        "metric": state.metric_name,
    }
    if metric is None:
        out["best_metric_note"] = NO_VALIDATION_NOTE if raw and not running else "not validated yet"
    if not running:
        # The module reads a truthy total_time as "finished"; a running trainer must not have one.
        seconds = _number(raw.get("total_time_s"))
        out["total_time"] = f"{seconds:.1f}s" if seconds is not None else str(raw.get("total_time") or "0.0s")
    if raw.get("message"):
        out["message"] = str(raw["message"])
    return out


def slicer_train_stats(states: list[TrainerState], running: str | None) -> dict[str, dict[str, Any]]:
    """``train_stats`` for ``/info``: the running trainer first, else the most recently updated one."""
    order = sorted(states, key=lambda s: (s.name != running, -s.updated))
    return {s.name: slicer_stats(s, s.name == running) for s in order}


def first_of(value: Any) -> Any:
    """The module sends the first item of a list option; other clients may send the list itself."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def options_with_choices(defaults: Mapping[str, Any], choices: Mapping[str, list]) -> dict[str, Any]:
    """A trainer/model config for the module: fields with choices become drop-downs (default first)."""
    out = dict(defaults)
    for key, values in choices.items():
        default = defaults.get(key)
        out[key] = [default, *[v for v in values if v != default]] if default in values else list(values)
    return out
