"""The label contract: one source of truth for label names, values and colours.

Contract (PRODUCT.md): ``0`` background, ``1`` organ, ``2..K+1`` one value per lesion class,
contiguous.  Inference, training, the datastore validation and the Slicer-facing ``/info`` all
read a :class:`LabelContract`; nothing else hard-codes label values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

BACKGROUND_VALUE = 0
ORGAN_VALUE = 1
FIRST_LESION_VALUE = 2

DEFAULT_ORGAN_NAME = "liver"
DEFAULT_LESION_CLASSES = ("lesion benign", "lesion malignant")

# RGB colours (0-255) shown by Slicer; organ brownish like Slicer's liver, lesions distinct.
_ORGAN_COLOUR = (221, 130, 101)
_LESION_COLOURS = (
    (111, 184, 210),
    (230, 75, 53),
    (241, 214, 145),
    (145, 60, 66),
    (128, 174, 128),
    (216, 101, 79),
)
_BACKGROUND_ALIASES = frozenset({"background", "bg", ""})


class LabelContractError(ValueError):
    """A label does not follow the contract (unknown name, value outside the contract, ...)."""


@dataclass(frozen=True)
class LabelContract:
    """Names and values of the label map shared by every stage and by ``/info``."""

    organ: str = DEFAULT_ORGAN_NAME
    lesion_classes: tuple[str, ...] = DEFAULT_LESION_CLASSES
    _by_name: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [self.organ, *self.lesion_classes]
        cleaned = [n.strip() for n in names]
        if any(not n for n in cleaned):
            raise LabelContractError("label names must not be empty")
        if len({n.lower() for n in cleaned}) != len(cleaned):
            raise LabelContractError(f"label names must be unique (case-insensitive): {names}")
        if any(n.lower() in _BACKGROUND_ALIASES for n in cleaned):
            raise LabelContractError("'background' is reserved for value 0")
        if not self.lesion_classes:
            raise LabelContractError("at least one lesion class is required")
        object.__setattr__(self, "organ", cleaned[0])
        object.__setattr__(self, "lesion_classes", tuple(cleaned[1:]))
        by_name = {self.organ.lower(): ORGAN_VALUE}
        for i, name in enumerate(self.lesion_classes):
            by_name[name.lower()] = FIRST_LESION_VALUE + i
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def from_config(cls, organ: str | None = None, lesion_classes: str | Sequence[str] | None = None) -> "LabelContract":
        """Build from ``--conf organ NAME --conf lesion_classes a,b`` style strings."""
        classes: Sequence[str] = DEFAULT_LESION_CLASSES
        if isinstance(lesion_classes, str) and lesion_classes.strip():
            classes = [c for c in (p.strip() for p in lesion_classes.split(",")) if c]
        elif lesion_classes and not isinstance(lesion_classes, str):
            classes = list(lesion_classes)
        return cls(organ=(organ or DEFAULT_ORGAN_NAME), lesion_classes=tuple(classes))

    # -- values -----------------------------------------------------------------------------
    @property
    def num_lesion_classes(self) -> int:
        return len(self.lesion_classes)

    @property
    def lesion_values(self) -> tuple[int, ...]:
        return tuple(range(FIRST_LESION_VALUE, FIRST_LESION_VALUE + self.num_lesion_classes))

    @property
    def max_value(self) -> int:
        return FIRST_LESION_VALUE + self.num_lesion_classes - 1

    def names_to_values(self) -> dict[str, int]:
        """Ordered ``{name: value}`` without background (what ``/info`` ``labels`` shows)."""
        out = {self.organ: ORGAN_VALUE}
        out.update({name: v for name, v in zip(self.lesion_classes, self.lesion_values)})
        return out

    def value_of(self, name: str) -> int:
        """Value of a label name (case-insensitive). Raises :class:`LabelContractError`."""
        key = name.strip().lower()
        if key in _BACKGROUND_ALIASES:
            return BACKGROUND_VALUE
        try:
            return self._by_name[key]
        except KeyError:
            known = ", ".join(self.names_to_values())
            raise LabelContractError(f"unknown label name '{name}' (this app knows: {known})") from None

    def name_of(self, value: int) -> str:
        if value == BACKGROUND_VALUE:
            return "background"
        for name, v in self.names_to_values().items():
            if v == value:
                return name
        raise LabelContractError(f"label value {value} is outside the contract 0..{self.max_value}")

    def colours(self) -> dict[str, tuple[int, int, int]]:
        out = {self.organ: _ORGAN_COLOUR}
        for i, name in enumerate(self.lesion_classes):
            out[name] = _LESION_COLOURS[i % len(_LESION_COLOURS)]
        return out

    # -- label maps ---------------------------------------------------------------------------
    def check_values(self, label: np.ndarray) -> None:
        """Raise if ``label`` holds a value outside ``0..max_value``."""
        values = np.unique(label)
        bad = [int(v) for v in values if v < 0 or v > self.max_value or int(v) != v]
        if bad:
            raise LabelContractError(f"label values {bad[:10]} are outside the contract 0..{self.max_value}")

    def remap_by_name(self, label: np.ndarray, label_info: Iterable[Mapping] | None) -> np.ndarray:
        """Translate a submitted label into contract values using Slicer's ``label_info``.

        Slicer writes values in *segment order* and sends ``[{"name": ..., "idx": ...}]``; the
        names are what counts. Without ``label_info`` the values must already be contract values.
        Values present in the label but not named in ``label_info`` are an error.
        """
        label = np.asarray(label)
        if not label_info:
            self.check_values(label)
            return label.astype(np.uint8, copy=False)
        lut: dict[int, int] = {BACKGROUND_VALUE: BACKGROUND_VALUE}
        for entry in label_info:
            name = entry.get("name")
            idx = entry.get("idx", entry.get("value"))
            if name is None or idx is None:
                raise LabelContractError(f"label_info entry {dict(entry)} needs 'name' and 'idx'")
            lut[int(idx)] = self.value_of(str(name))
        present = [int(v) for v in np.unique(label)]
        unnamed = [v for v in present if v not in lut]
        if unnamed:
            raise LabelContractError(f"label values {unnamed[:10]} are not named in label_info")
        table = np.zeros(max(present + list(lut)) + 1, dtype=np.uint8)
        for src, dst in lut.items():
            if src >= 0:
                table[src] = dst
        if min(present) < 0:
            raise LabelContractError("label values must not be negative")
        return table[label.astype(np.int64, copy=False)]

    def organ_mask(self, label: np.ndarray) -> np.ndarray:
        """Organ including the lesions inside it (a lesion is part of the organ)."""
        return label >= ORGAN_VALUE

    def lesion_mask(self, label: np.ndarray) -> np.ndarray:
        return label >= FIRST_LESION_VALUE
