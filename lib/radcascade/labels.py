"""The label contract: one source of truth for label names, values and colours.

Contract: ``0`` background, ``1`` organ, ``2..K+1`` one value per lesion class,
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


MAX_LABEL_INFO_ENTRIES = 256
MAX_LABEL_NAME_LENGTH = 128


@dataclass(frozen=True)
class LabelInfoEntry:
    """One ``{"name", "idx"}`` pair of Slicer's ``label_info``."""

    name: str
    idx: int


@dataclass(frozen=True)
class RemappedLabel:
    """A submitted label in contract values, and the ``label_info`` names ignored (no voxels)."""

    label: np.ndarray
    ignored: tuple[str, ...]


def _label_value(raw) -> int:
    """A label value from ``label_info``: an integer (or a string of one), 0..2**31-1."""
    if isinstance(raw, bool):
        raise LabelContractError(f"label_info idx {raw!r} is not an integer")
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, str) and raw.strip().lstrip("+").isdigit():
        raw = int(raw.strip())
    if not isinstance(raw, int):
        raise LabelContractError(f"label_info idx {str(raw)[:40]!r} is not an integer")
    if not 0 <= raw < 2**31:
        raise LabelContractError(f"label_info idx {raw} is outside 0..{2**31 - 1}")
    return raw


def parse_label_info(label_info) -> list[LabelInfoEntry]:
    """Check the shape of Slicer's ``label_info`` (a list of ``{"name": str, "idx": int}``)."""
    if not isinstance(label_info, (list, tuple)):
        raise LabelContractError(f"label_info must be a list of {{name, idx}} objects, not {type(label_info).__name__}")
    if len(label_info) > MAX_LABEL_INFO_ENTRIES:
        raise LabelContractError(f"label_info has {len(label_info)} entries (at most {MAX_LABEL_INFO_ENTRIES})")
    out = []
    for entry in label_info:
        if not isinstance(entry, Mapping):
            raise LabelContractError(f"label_info entry {str(entry)[:60]!r} is not a {{name, idx}} object")
        name = entry.get("name")
        idx = entry.get("idx", entry.get("value"))
        if name is None or idx is None:
            raise LabelContractError(f"label_info entry {str(dict(entry))[:80]} needs 'name' and 'idx'")
        if not isinstance(name, str) or len(name) > MAX_LABEL_NAME_LENGTH:
            raise LabelContractError(f"label_info name {str(name)[:40]!r} must be a string of at most "
                                     f"{MAX_LABEL_NAME_LENGTH} characters")
        out.append(LabelInfoEntry(name, _label_value(idx)))
    return out


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
        bad = [v.item() for v in values if v < 0 or v > self.max_value or int(v) != v]
        if bad:
            raise LabelContractError(f"label values {bad[:10]} are outside the contract 0..{self.max_value}")

    def remap_by_name(self, label: np.ndarray, label_info: Iterable[Mapping] | None) -> np.ndarray:
        """Translate a submitted label into contract values using Slicer's ``label_info``
        (see :meth:`remap_submitted`); only the remapped array."""
        return self.remap_submitted(label, label_info).label

    def remap_submitted(self, label: np.ndarray, label_info) -> "RemappedLabel":
        """Translate a submitted label into contract values using Slicer's ``label_info``.

        Slicer writes values in *segment order* and sends ``[{"name": ..., "idx": ...}]``; the
        names are what counts. Without ``label_info`` the values must already be contract values.
        Values present in the label but not named in ``label_info`` are an error, and so is a name
        the app does not know **if its value has voxels**; an unknown name whose value is empty
        (Slicer's leftover ``Segment_4``) is ignored and reported in ``ignored``.
        """
        label = np.asarray(label)
        if not np.issubdtype(label.dtype, np.integer):
            label = label.astype(np.int64)
        present, inverse = np.unique(label, return_inverse=True)
        if len(present) and present[0] < 0:
            raise LabelContractError("label values must not be negative")
        if not label_info:
            self.check_values(present)
            return RemappedLabel(label.astype(np.uint8, copy=False), ())
        entries = parse_label_info(label_info)
        voxels = {int(v) for v in present}
        lut: dict[int, int] = {BACKGROUND_VALUE: BACKGROUND_VALUE}
        named: dict[int, str] = {}
        ignored = []
        for entry in entries:
            if entry.idx in named and named[entry.idx].lower() != entry.name.lower():
                if entry.idx in voxels:
                    raise LabelContractError(f"label_info names value {entry.idx} both '{named[entry.idx]}' and "
                                             f"'{entry.name}'")
            try:
                lut[entry.idx] = self.value_of(entry.name)
            except LabelContractError:
                if entry.idx in voxels:
                    raise
                ignored.append(entry.name)  # an empty segment with a name this app does not use
                continue
            named[entry.idx] = entry.name
        unnamed = [v for v in voxels if v not in lut]
        if unnamed:
            raise LabelContractError(f"label values {sorted(unnamed)[:10]} are not named in label_info")
        table = np.array([lut[int(v)] for v in present], dtype=np.uint8)
        return RemappedLabel(table[inverse].reshape(label.shape), tuple(ignored))

    def organ_mask(self, label: np.ndarray) -> np.ndarray:
        """Organ including the lesions inside it (a lesion is part of the organ)."""
        return label >= ORGAN_VALUE

    def lesion_mask(self, label: np.ndarray) -> np.ndarray:
        return label >= FIRST_LESION_VALUE
