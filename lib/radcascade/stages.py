"""Stage 1 (organ, whole volume at coarse spacing) and stage 2 (lesions, organ crop at fine spacing).

A :class:`StageSpec` is the one definition of a stage: its network, the grid it works on, the region
it sees (:meth:`StageSpec.region`), how that region becomes network input (:meth:`StageSpec.prepare`)
and what it learns (:meth:`StageSpec.target`).  Serving (:class:`OrganStage`, :class:`LesionStage`),
training and its validation (which runs the served stage, see ``radcascade.training``), uncertainty
scoring and the benchmarks all go through it.

Each stage takes the image tensor already on the compute device and returns a small typed result;
nothing is written to or read from disk between stages.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from radcascade.checkpoints import Checkpoint, LoadedModel
from radcascade.labels import LabelContract
from radcascade.networks import FULLRES_LESION_UNET, ORGAN_UNET, UNetSpec
from radcascade.preprocessing import (
    HU_WINDOW,
    LESION_HU_WINDOW,
    BoundingBox,
    dilate_box,
    normalized_on_grid,
    pad_to_multiple,
    resample,
    sample_region,
    shape_at_spacing,
    upsample_above,
)

logger = logging.getLogger(__name__)

# Default spacings (mm) the stages are trained at; a checkpoint records its own.
ORGAN_SPACING = (5.0, 5.0, 8.0)
LESION_SPACING = (2.5, 2.5, 4.0)
LESION_MARGIN_MM = 12.0
LESION_ROI = (96, 96, 48)
LESION_OVERLAP = 0.25
# The small-lesion detector's file, next to the lesion model's (see LesionStage).
SMALL_LESION_MODEL_FILE = "lesion_small.pt"
# A model file (either stage's) may carry its test-time mirroring, and a lesion model file its probability
# threshold and crop margin, chosen on validation.
MIRROR_AXES_KEY = "mirror_axes"
THRESHOLD_KEY = "lesion_threshold"
MARGIN_KEY = "lesion_margin_mm"
# An organ model file may carry the probability threshold its mask is cut at, chosen on validation: a
# network that is systematically conservative at the organ's border (under-segmenting by about one
# voxel, as the committed one is) is calibrated by it (chosen by radcascade.training's Trainer and by benchmarks/lesion_quality.py).
ORGAN_THRESHOLD_KEY = "organ_threshold"
ORGAN_THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1)
# Test-time mirroring the trainer publishes with an organ model: along x, y and z (8 passes of a small
# network on the coarse grid), chosen with the cut on 40 validation studies: pooled organ Dice 0.9515 with
# z alone (best cut 0.3), 0.9541 with x, y and z (best cut 0.4) (docs/benchmarks.md, lesion quality).
ORGAN_MIRROR_AXES = (0, 1, 2)


def pick_organ_threshold(curve: dict[float, float]) -> float:
    """The cut with the best validation Dice; a tie keeps the higher (less calibrated) cut."""
    return max(curve, key=lambda t: (curve[t], t))


# Test-time mirroring the trainer publishes with a lesion model: along z, chosen on the validation
# studies of radcascade.lesion_quality (2 passes; see docs/benchmarks.md, lesion quality).
LESION_MIRROR_AXES = (2,)
MIN_ORGAN_MEAN_HU = -300.0


class StageUntrainedError(RuntimeError):
    """A stage has no usable model file."""


class ModelSource(Protocol):
    """Where a stage gets its network: a :class:`~radcascade.checkpoints.WarmModel` (a published file)
    or a :class:`~radcascade.checkpoints.FixedModel` (a network being trained)."""

    problem: str | None

    def get(self) -> LoadedModel | None: ...


@dataclass(frozen=True)
class StageSpec:
    """One stage, defined once: network, grid, region seen, input preparation, training target."""

    name: str
    network: UNetSpec
    spacing: tuple[float, float, float]  # mm of the grid the network works on (a checkpoint records its own)
    margin_mm: float | None  # None: the whole volume; else the organ's box plus this margin
    target: Callable[[LabelContract, np.ndarray], np.ndarray]  # binary truth from a contract label
    positive_fraction: float  # share of training patches centred on the target
    filters_components: bool = False  # its output's smallest component kept is chosen on validation
    window: tuple[float, float] = HU_WINDOW  # CT window a new network of this stage is trained with

    def region(self, shape, spacing, organ_box: BoundingBox | None, margin_scale: float = 1.0) -> BoundingBox:
        """Full-resolution box the stage sees (training widens the margin to leave room for jitter)."""
        whole = BoundingBox((0, 0, 0), tuple(int(n) for n in shape))
        if self.margin_mm is None or organ_box is None:
            return whole
        margin = [int(np.ceil(margin_scale * self.margin_mm / s)) for s in spacing]
        return organ_box.expanded(margin, shape)

    def prepare(self, image: torch.Tensor, spacing, box: BoundingBox, grid_spacing=None, window=None) -> torch.Tensor:
        """``[1, X, Y, Z]`` HU -> the network's input over ``box``: windowed (a model file's own window,
        else the stage's), resampled to the grid."""
        grid = shape_at_spacing(box.shape, spacing, grid_spacing or self.spacing)
        return normalized_on_grid(image[(slice(None),) + box.slices], grid, window or self.window)

    def prepare_for(self, checkpoint: Checkpoint, image: torch.Tensor, spacing, box: BoundingBox) -> torch.Tensor:
        """:meth:`prepare` on the grid and in the CT window that ``checkpoint``'s network was trained with."""
        return self.prepare(image, spacing, box, checkpoint.spacing, checkpoint.hu_window)

    def prepare_target(self, mask: np.ndarray, spacing, box: BoundingBox, grid_spacing=None) -> torch.Tensor:
        """A full-resolution binary mask -> ``[1, ...]`` uint8 on the stage's grid over ``box``."""
        grid = shape_at_spacing(box.shape, spacing, grid_spacing or self.spacing)
        t = torch.from_numpy(np.ascontiguousarray(mask[box.slices]).astype(np.float32)).unsqueeze(0)
        return (resample(t, grid) > 0.5).to(torch.uint8)


ORGAN = StageSpec("organ", ORGAN_UNET, ORGAN_SPACING, None, LabelContract.organ_mask, 0.5)
LESION = StageSpec("lesion", FULLRES_LESION_UNET, LESION_SPACING, LESION_MARGIN_MM, LabelContract.lesion_mask, 0.67,
                   filters_components=True, window=LESION_HU_WINDOW)
STAGE_SPECS = {spec.name: spec for spec in (ORGAN, LESION)}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op on CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _require(model: ModelSource, name: str) -> LoadedModel:
    loaded = model.get()
    if loaded is None:
        raise StageUntrainedError(f"{name} stage is untrained: {model.problem}")
    return loaded


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


@dataclass
class OrganResult:
    """Organ mask at full resolution, stored only inside its tight bounding box."""

    box: BoundingBox | None
    mask: torch.Tensor | None  # bool, shape == box.shape, on the compute device
    latency_s: float

    @property
    def found(self) -> bool:
        return self.box is not None


@dataclass
class LesionResult:
    """Lesion mask and probability over the crop the stage processed (full resolution)."""

    box: BoundingBox  # crop in full-resolution voxel indices
    mask: torch.Tensor  # bool, crop shape
    probability: torch.Tensor  # float, crop shape; where it is <= the threshold it may read 0 (see LesionStage)
    latency_s: float


class OrganStage:
    """Whole volume -> coarse spacing -> UNet -> largest component -> full-resolution mask in its box."""

    spec = ORGAN

    def __init__(self, model: ModelSource, amp: bool = True, threshold: float | None = None,
                 mirror_axes: tuple[int, ...] | None = None):
        self.model = model
        self.amp = amp
        # None: the model file's choice (chosen on validation), else a 0.5 cut / no mirroring.
        self.threshold = threshold
        self.mirror_axes = mirror_axes

    def mirror_axes_for(self, loaded: LoadedModel) -> tuple[int, ...]:
        """Test-time mirroring in force: this stage's, else the model file's, else none."""
        axes = self.mirror_axes if self.mirror_axes is not None else loaded.checkpoint.summary.get(MIRROR_AXES_KEY)
        return tuple(int(a) for a in (axes or ()))

    def threshold_for(self, loaded: LoadedModel) -> float:
        """Probability the organ mask is cut at: this stage's, else the model file's, else 0.5."""
        if self.threshold is not None:
            return float(self.threshold)
        return float(loaded.checkpoint.summary.get(ORGAN_THRESHOLD_KEY) or 0.5)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, spacing) -> OrganResult:
        t0 = time.perf_counter()
        loaded = _require(self.model, "organ")
        threshold = self.threshold_for(loaded)
        full_shape = tuple(image.shape[1:])
        x = self.spec.prepare_for(loaded.checkpoint, image, spacing, self.spec.region(full_shape, spacing, None))
        coarse_shape = tuple(x.shape[1:])
        x, back = pad_to_multiple(x, loaded.checkpoint.spec.divisor)

        def forward(xi: torch.Tensor) -> torch.Tensor:
            with autocast_for(image.device, self.amp):
                return loaded.network(xi)

        prob = mirrored_probability(forward, x.unsqueeze(0), self.mirror_axes_for(loaded))[0][back]  # [1, cx, cy, cz]
        coarse = largest_component((prob[0] > threshold).cpu().numpy())
        box_c = BoundingBox.of_mask(coarse)
        if box_c is None:
            synchronize(image.device)
            return OrganResult(None, None, time.perf_counter() - t0)
        # Keep only the chosen component (dilated one coarse voxel so interpolation near the
        # border is unaffected), then evaluate it at full resolution inside the box only.
        keep = torch.from_numpy(ndimage.binary_dilation(coarse)).to(prob.device)
        prob = prob * keep
        factors = [f / c for f, c in zip(full_shape, coarse_shape)]
        box = box_c.expanded((1, 1, 1), coarse_shape).scaled(factors).expanded((0, 0, 0), full_shape)
        full = sample_region(prob, full_shape, box)[0] > threshold
        local = BoundingBox.of_mask(full)  # in coordinates of ``box``
        if local is None:
            synchronize(image.device)
            return OrganResult(None, None, time.perf_counter() - t0)
        tight = BoundingBox(tuple(l + b for l, b in zip(local.lo, box.lo)), tuple(h + b for h, b in zip(local.hi, box.lo)))
        mask = full[local.slices].contiguous()
        # An organ is soft tissue: a "mask" over air (e.g. an empty or non-CT volume, where instance
        # normalisation makes the network see patterns in nothing) is no organ.
        inside = torch.where(mask, image[0][tight.slices], 0).sum(dtype=torch.float64)  # no gather of the voxels
        if float(inside) / max(1, int(mask.sum())) < MIN_ORGAN_MEAN_HU:
            synchronize(image.device)
            return OrganResult(None, None, time.perf_counter() - t0)
        synchronize(image.device)
        return OrganResult(tight, mask, time.perf_counter() - t0)


def mirrored_probability(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                         mirror_axes=()) -> torch.Tensor:
    """Foreground probability ``[N, 1, X, Y, Z]`` of ``forward`` (a batch ``[N, 1, X, Y, Z]`` -> logits
    ``[N, C, X, Y, Z]``), averaged over the copies flipped along every subset of the voxel axes
    ``mirror_axes`` (nnU-Net's test-time mirroring: 2^k passes; none: one pass)."""
    flips = [f for r in range(len(mirror_axes) + 1) for f in itertools.combinations(tuple(mirror_axes), r)]
    total = None
    for f in flips:
        dims = [a + 2 for a in f]
        p = torch.softmax(forward(x.flip(dims) if f else x).float(), dim=1)[:, 1:2]
        p = p.flip(dims) if f else p
        total = p if total is None else total + p
    return total / len(flips)


def window_logits(network: torch.nn.Module, x: torch.Tensor, roi, sw_batch_size: int = 2,
                  overlap: float = LESION_OVERLAP) -> torch.Tensor:
    """The lesion stage's sliding-window inferer on a batch ``[N, 1, X, Y, Z]`` (serving and uncertainty)."""
    return sliding_window_inference(x, roi, sw_batch_size, network, overlap=overlap, mode="gaussian")


class LesionStage:
    """Organ box + margin -> fine spacing -> sliding-window UNet -> lesion mask inside the organ.

    An optional **small-lesion detector** (a second lesion network, fine-tuned on small lesions) runs on the
    same input, and the lesion probability is the larger of the two at every voxel: a lesion either
    network finds is found, and the main network's post-processing choices (threshold, mirroring, the
    filters recorded in its file) apply to the result.  A detector trained on another grid or CT window
    than the main network cannot share its input and is not used (logged once, see :meth:`detector`).
    """

    spec = LESION

    def __init__(
        self,
        model: ModelSource,
        roi_size=LESION_ROI,
        sw_batch_size: int = 2,
        overlap: float = LESION_OVERLAP,
        amp: bool = True,
        mirror_axes: tuple[int, ...] | None = None,
        threshold: float | None = None,
        margin_mm: float | None = None,
        small_lesion_model: ModelSource | None = None,
    ):
        self.model = model
        self.small_lesion_model = small_lesion_model
        self._refused_detector: str | None = None  # digest of a detector already reported as unusable
        self.roi_size = tuple(roi_size)
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.amp = amp
        # Test-time mirroring (probabilities averaged over the flips of these voxel axes, 2^k passes),
        # the probability threshold and the crop margin: None = the model file's choice (chosen on
        # validation, see radcascade.lesion_quality), else none / 0.5 / the spec's margin.
        self.mirror_axes = mirror_axes
        self.threshold = threshold
        self.margin_mm = margin_mm

    def settings(self, loaded: LoadedModel | None) -> tuple[tuple[int, ...], float, float]:
        """Mirror axes, threshold and crop margin in force: this stage's, else the model file's, else
        none / 0.5 / the spec's margin."""
        summary = loaded.checkpoint.summary if loaded is not None else {}
        axes = self.mirror_axes if self.mirror_axes is not None else tuple(summary.get(MIRROR_AXES_KEY) or ())
        threshold = self.threshold if self.threshold is not None else summary.get(THRESHOLD_KEY)
        margin = self.margin_mm if self.margin_mm is not None else summary.get(MARGIN_KEY)
        return (tuple(int(a) for a in axes), float(0.5 if threshold is None else threshold),
                float(self.spec.margin_mm if margin is None else margin))

    def probability(self, network: torch.nn.Module, x: torch.Tensor, roi, mirror_axes=()) -> torch.Tensor:
        """Lesion probability ``[1, ...]`` of a prepared input ``[1, ...]``, averaged over the mirrored
        copies along ``mirror_axes`` (nnU-Net's test-time mirroring; none: one pass)."""
        def forward(xi: torch.Tensor) -> torch.Tensor:
            with autocast_for(x.device, self.amp):
                return window_logits(network, xi, roi, self.sw_batch_size, self.overlap)

        return mirrored_probability(forward, x.unsqueeze(0), mirror_axes)[0]

    def detector(self, main: LoadedModel) -> LoadedModel | None:
        """The small-lesion detector to run with ``main``, or None: none published, or one whose grid or
        CT window differs from ``main``'s (it could not share the prepared input)."""
        loaded = self.small_lesion_model.get() if self.small_lesion_model is not None else None
        if loaded is None:
            return None
        mine, theirs = main.checkpoint, loaded.checkpoint
        if (tuple(theirs.spacing), tuple(theirs.hu_window)) != (tuple(mine.spacing), tuple(mine.hu_window)):
            if self._refused_detector != loaded.digest:
                self._refused_detector = loaded.digest
                logger.warning("small-lesion detector not used: its grid %s mm / window %s HU differs from the lesion "
                               "model's %s / %s", tuple(theirs.spacing), tuple(theirs.hu_window),
                               tuple(mine.spacing), tuple(mine.hu_window))
            return None
        return loaded

    def window(self, fine_shape, divisor: int) -> tuple[int, ...]:
        """Sliding-window size: the configured ROI, shrunk to a small crop (a multiple of ``divisor``)."""
        return tuple(min(r, int(np.ceil(n / divisor) * divisor)) for r, n in zip(self.roi_size, fine_shape))

    def crop_box(self, organ_box: BoundingBox, spacing, shape) -> BoundingBox:
        margin_mm = self.settings(self.model.get())[2]
        return self.spec.region(shape, spacing, organ_box, margin_scale=margin_mm / self.spec.margin_mm)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, spacing, organ: OrganResult) -> LesionResult:
        t0 = time.perf_counter()
        loaded = _require(self.model, "lesion")
        box = self.crop_box(organ.box, spacing, tuple(image.shape[1:]))
        x = self.spec.prepare_for(loaded.checkpoint, image, spacing, box)
        fine_shape = tuple(x.shape[1:])
        roi = self.window(fine_shape, loaded.checkpoint.spec.divisor)
        mirror_axes, threshold, _ = self.settings(loaded)
        prob_fine = self.probability(loaded.network, x, roi, mirror_axes)
        detector = self.detector(loaded)
        if detector is not None:
            detector_roi = self.window(fine_shape, detector.checkpoint.spec.divisor)
            prob_fine = torch.maximum(prob_fine, self.probability(detector.network, x, detector_roi, mirror_axes))
        # Lesions lie inside the organ: allow a 2-voxel tolerance around the organ mask.
        organ_in_crop = torch.zeros(box.shape, dtype=torch.bool, device=image.device)
        offset = tuple(o - b for o, b in zip(organ.box.lo, box.lo))
        organ_in_crop[tuple(slice(o, o + n) for o, n in zip(offset, organ.box.shape))] = organ.mask
        if tuple(box.shape) != fine_shape and all(b >= f for b, f in zip(box.shape, fine_shape)):
            # A native grid finer than the stage's (the usual CT): the probability is brought back only
            # where it can exceed the threshold, and the mask is decided there; elsewhere it is 0 (no
            # lesion either way).
            prob, boxes = upsample_above(prob_fine, box.shape, threshold)
            prob = prob[0]
            mask = torch.zeros(box.shape, dtype=torch.bool, device=image.device)
            for b in boxes:
                pad = b.expanded((2, 2, 2), box.shape)
                inner = tuple(slice(l - p, h - p) for l, h, p in zip(b.lo, b.hi, pad.lo))
                mask[b.slices] = (prob[b.slices] > threshold) & dilate_box(organ_in_crop[pad.slices], 2)[inner]
        else:
            prob = resample(prob_fine, box.shape)[0]
            mask = (prob > threshold) & dilate_box(organ_in_crop, 2)
        synchronize(image.device)
        return LesionResult(box, mask, prob, time.perf_counter() - t0)
