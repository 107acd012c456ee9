"""Training recipes for stage 1 (organ) and stage 2 (lesion), usable with or without a server.

Both recipes: read (image, label) pairs, map submitted labels to contract values **by name**,
cache the preprocessed volumes in memory (each stage's region and grid from its
:class:`~radcascade.stages.StageSpec`), train with augmentation (flips, small rotations, intensity
shift/scale, noise), validate on a held-out split of studies **with the served stage itself** (the
Dice reported is the Dice of what the server would answer, at full resolution, after
post-processing), and publish the best model atomically.  Progress is written to a small JSON file that ``/info`` shows (``train_details``; ``train_stats`` is its Slicer-readable summary).

CLI (trains the committed starting weights on generated data)::

    python -m radcascade.training --generate 24 --epochs 60 --out apps/radcascade/pretrained
    torchrun --nproc_per_node 2 -m radcascade.training --studies DIR --out DIR   # every GPU of a machine
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from monai import transforms as mt
from scipy import ndimage

from radcascade.cascade import (
    LESION_MIN_INSIDE_ORGAN,
    MIN_INSIDE_ORGAN_KEY,
    MIN_LESION_ML_KEY,
    MIN_MEAN_PROBABILITY_KEY,
    NOISY_MIN_MEAN_PROBABILITY_KEY,
    Cascade,
    served_dice_counts,
)
from radcascade.checkpoints import (
    Checkpoint,
    CheckpointError,
    FixedModel,
    WarmModel,
    publish_checkpoint,
    read_checkpoint,
)
from radcascade.distributed import BatchDiceCELoss, Distributed, init_from_env, shutdown
from radcascade.files import write_json_atomic
from radcascade.labels import LabelContract
from radcascade.lesion_quality import choose_min_lesion_ml, choose_min_mean_probability, component_table
from radcascade.networks import FULLRES_LESION_UNET, LESION_UNET, RESENC_LESION_UNET, UNetSpec
from radcascade.tracking import tracker_for
from radcascade.preprocessing import BoundingBox, valid_window
from radcascade.stages import (
    LESION_MIRROR_AXES,
    MIRROR_AXES_KEY,
    ORGAN_MIRROR_AXES,
    ORGAN_THRESHOLD_KEY,
    ORGAN_THRESHOLDS,
    SMALL_LESION_MODEL_FILE,
    STAGE_SPECS,
    StageSpec,
    autocast_for,
    default_device,
    pick_organ_threshold,
)
from radcascade.volumes import Volume, load_label_for, load_volume

logger = logging.getLogger(__name__)
STAGES = tuple(STAGE_SPECS)
TRAINING_MARGIN_SCALE = 1.5  # the lesion crop is trained wider than served: room for random patches


@dataclass(frozen=True)
class TrainingCase:
    """One labelled study: where its files are and how its label values are named."""

    name: str
    image: Path
    label: Path
    label_info: tuple[dict, ...] | None = None  # Slicer's [{name, idx}], None = contract values


@dataclass
class TrainConfig:
    """Knobs of one training run (all have defaults sized for a CPU workstation)."""

    stage: str
    max_epochs: int = 50
    learning_rate: float = 2e-3
    val_fraction: float = 0.2
    seed: int = 0
    batch_size: int = 2
    patch_size: tuple[int, int, int] | None = None
    samples_per_volume: int = 4
    spec: UNetSpec | None = None  # None: the published model's network (warm start), else the stage's default
    hu_window: tuple[float, float] | None = None  # CT window of the input; None: as ``spec``
    spacing: tuple[float, float, float] | None = None
    warm_start: bool = True  # start from the published model when its network matches
    amp: bool = True
    max_minutes: float | None = None  # stop early (still publishing the best) after this time
    val_every: int = 1
    # Cross-entropy weight of a lesion's voxels grows as the lesion shrinks, up to this (1: off): see
    # small_lesion_weights. Voxel-wise losses are ruled by large lesions; a 10 mm lesion has 1/27 of the
    # voxels of a 30 mm one and is the one a radiologist needs found.
    small_lesion_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage '{self.stage}' (one of {STAGES})")
        if self.spacing is None:
            self.spacing = self.stage_spec.spacing
        if self.patch_size is None:
            self.patch_size = (64, 64, 32)
        if self.max_epochs < 1:
            raise ValueError("max_epochs must be >= 1")
        if self.hu_window is not None:
            self.hu_window = valid_window(self.hu_window)
        if self.small_lesion_weight < 1:
            raise ValueError("small_lesion_weight must be >= 1 (1: every voxel weighs the same)")

    @property
    def stage_spec(self) -> StageSpec:
        return STAGE_SPECS[self.stage]


@dataclass
class PreparedCase:
    """A case resampled to the stage's spacing: normalised image and binary target, ``[1, X, Y, Z]``."""

    name: str
    image: torch.Tensor
    target: torch.Tensor


@dataclass
class TrainResult:
    """Summary of a run; also what ``train_stats`` shows."""

    stage: str
    status: str
    epochs_done: int
    total_epochs: int
    best_metric: float | None
    best_metric_epoch: int | None
    train_loss: list[float] = field(default_factory=list)
    val_dice: list[float] = field(default_factory=list)
    train_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)
    total_time_s: float = 0.0
    start_ts: int = 0
    published: bool = False
    model_path: str = ""
    device: str = "cpu"
    warm_started: bool = False
    message: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["epoch"] = self.epochs_done
        d["total_time"] = f"{self.total_time_s:.1f}s"
        return d


def read_case(case: TrainingCase, contract: LabelContract) -> tuple[Volume, np.ndarray]:
    """The image and its label in contract values (mapped by name)."""
    volume = load_volume(case.image)
    return volume, contract.remap_by_name(load_label_for(case.label, volume), case.label_info)


def prepare_case(case: TrainingCase, cfg: TrainConfig, contract: LabelContract) -> PreparedCase:
    """Load, remap by name, and cut out + resample the stage's region (its StageSpec) for training."""
    volume, label = read_case(case, contract)
    stage = cfg.stage_spec
    box = stage.region(volume.shape, volume.spacing, BoundingBox.of_mask(contract.organ_mask(label)),
                       margin_scale=TRAINING_MARGIN_SCALE)
    image = torch.from_numpy(volume.array).unsqueeze(0)
    return PreparedCase(case.name, stage.prepare(image, volume.spacing, box, cfg.spacing, cfg.hu_window),
                        stage.prepare_target(stage.target(contract, label), volume.spacing, box, cfg.spacing))


@dataclass
class ValidationCase:
    """A held-out study at full resolution: validation runs the served stage on it."""

    name: str
    volume: Volume
    label: np.ndarray  # contract values


def split_cases(cases: Sequence[TrainingCase], val_fraction: float, seed: int) -> tuple[list, list]:
    """Hold out whole studies for validation (at least one when there are 3 or more, none when
    ``val_fraction`` is 0: then the epoch with the lowest training loss is published)."""
    cases = sorted(cases, key=lambda c: c.name)
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = int(round(val_fraction * len(cases)))
    if len(cases) >= 3 and val_fraction > 0:
        n_val = max(1, n_val)
    n_val = min(n_val, len(cases) - 1)
    val = [cases[i] for i in order[:n_val]]
    train = [cases[i] for i in order[n_val:]]
    return train, val


# A study without lesions (a normal one, common on a screening worklist) is a valid case for the lesion
# stage: its patches come from background only, as they should. MONAI warns about it for every such
# study, which fills the server's training log with what looks like an error; this one message is muted.
warnings.filterwarnings("ignore", message=r"Num foregrounds 0, .*unable to generate class balanced samples",
                        category=UserWarning)


# A lesion of this diameter (and larger) keeps weight 1 under small_lesion_weights.
SMALL_LESION_REFERENCE_MM = 20.0


def small_lesion_weights(target: torch.Tensor, spacing, max_weight: float) -> torch.Tensor:
    """Per-voxel cross-entropy weights ``[B, *spatial]`` for a binary target ``[B, 1, *spatial]`` on a grid
    of ``spacing`` mm: background 1; every voxel of a connected lesion (as much of it as the patch holds)
    ``reference / its voxels``, clipped to [1, ``max_weight``], with reference the voxels of a
    :data:`SMALL_LESION_REFERENCE_MM` sphere; so each lesion up to that size weighs about the same."""
    reference = math.pi / 6 * SMALL_LESION_REFERENCE_MM**3 / float(np.prod(spacing))
    mask = target[:, 0].cpu().numpy() > 0
    weights = np.ones(mask.shape, np.float32)
    structure = np.ones((3, 3, 3), bool)
    for b in range(mask.shape[0]):
        components, n = ndimage.label(mask[b], structure)
        if n:
            sizes = np.bincount(components.ravel())[1:].astype(np.float32)
            per_lesion = np.clip(reference / sizes, 1.0, max_weight)
            weights[b][components > 0] = per_lesion[components[components > 0] - 1]
    return torch.from_numpy(weights)


def supervised_loss(loss_fn: Callable, output: torch.Tensor, target: torch.Tensor,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of a network's training output. A ``resenc`` network with deep supervision returns its
    heads stacked on dim 1 (main output first, each upsampled to full size): their losses are summed
    with weights that halve per coarser head, normalised to 1 (nnU-Net's deep supervision)."""
    if output.ndim == target.ndim:
        return loss_fn(output, target, weights)
    heads = output.unbind(1)
    head_weights = [0.5**i for i in range(len(heads))]
    total = sum(head_weights)
    return sum(w / total * loss_fn(head, target, weights) for w, head in zip(head_weights, heads))


def _augment(patch_size, pos_fraction: float, samples: int) -> mt.Compose:
    keys = ("image", "label")
    return mt.Compose(
        [
            mt.SpatialPadd(keys, spatial_size=patch_size),
            mt.RandCropByPosNegLabeld(
                keys, label_key="label", spatial_size=patch_size, pos=pos_fraction, neg=1 - pos_fraction,
                num_samples=samples, allow_smaller=True,
            ),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=0),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=1),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=2),
            mt.RandRotated(keys, range_x=0.0, range_y=0.0, range_z=0.26, prob=0.3, mode=("bilinear", "nearest"),
                           padding_mode="border"),
            mt.RandScaleIntensityd("image", factors=0.1, prob=0.5),
            mt.RandShiftIntensityd("image", offsets=0.05, prob=0.5),
            mt.RandGaussianNoised("image", std=0.02, prob=0.3),
        ]
    )


class Trainer:
    """Trains one stage on a list of cases and publishes the best model to ``model_path``."""

    def __init__(
        self,
        cfg: TrainConfig,
        contract: LabelContract,
        model_path: str | Path,
        stats_path: str | Path | None = None,
        device: torch.device | None = None,
        progress: Callable[[str], None] | None = None,
        dist: Distributed | None = None,
        on_step: Callable[[Distributed, int, int, float], None] | None = None,
        tracking_uri: str | None = None,
    ):
        self.contract = contract
        self.model_path = Path(model_path)
        self._published, self._unreadable = self._read_published(cfg)
        self.cfg = self._with_network(cfg)
        self.stats_path = Path(stats_path) if stats_path else self.model_path.with_suffix(".stats.json")
        self.dist = dist or Distributed.current()
        self.device = device or (self.dist.device() if self.dist.active else default_device())
        self._progress = progress or (lambda msg: logger.info(msg))
        self.on_step = on_step  # (dist, epoch, step, loss) after every optimiser step, on every rank
        self.tracker = tracker_for(tracking_uri if self.dist.main else None)  # MLflow, rank 0 only
        # A small-lesion detector published next to the lesion model runs in the served stage, so it runs in
        # validation too (radcascade.stages.LesionStage).
        detector = self.model_path.parent / SMALL_LESION_MODEL_FILE
        self._detector = (WarmModel(detector, self.device) if cfg.stage == "lesion" and detector != self.model_path
                          and detector.exists() else None)

    def _read_published(self, cfg: TrainConfig) -> tuple[Checkpoint | None, str | None]:
        """The published model to warm-start from (read once, when the trainer is made), or why there is none."""
        if not (cfg.warm_start and self.model_path.exists()):
            return None, None
        try:
            return read_checkpoint(self.model_path), None
        except CheckpointError as e:
            return None, str(e)

    def _with_network(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with its network and CT window settled: what it names, else the published model's (so
        retraining from corrections warm-starts whatever was published), else the stage's defaults."""
        published = self._published
        spec = cfg.spec or (published.spec if published else cfg.stage_spec.network)
        window = cfg.hu_window or (published.hu_window if published else cfg.stage_spec.window)
        return replace(cfg, spec=spec, hu_window=window)

    def progress(self, message: str) -> None:
        if self.dist.main:
            self._progress(message)

    def _write_stats(self, result: TrainResult) -> None:
        if self.dist.main:  # one writer: rank 0
            write_json_atomic(self.stats_path, result.to_json())

    def _network(self) -> tuple[torch.nn.Module, bool]:
        net = self.cfg.spec.build()
        ckpt, warm = self._published, False
        if self._unreadable:
            self.progress(f"not warm-starting: {self._unreadable}")
        elif ckpt and (ckpt.spec, tuple(ckpt.spacing), ckpt.hu_window) == (self.cfg.spec, tuple(self.cfg.spacing),
                                                                          self.cfg.hu_window):
            net.load_state_dict(ckpt.state_dict)
            warm = True
        return net.to(self.device), warm

    def _served(self, net: torch.nn.Module, summary: dict | None = None) -> Cascade:
        """The server's cascade running ``net`` (with ``summary``'s post-processing choices) for this stage."""
        net.eval()
        source = FixedModel(net, Checkpoint(self.cfg.spec, {}, tuple(self.cfg.spacing), dict(summary or {}),
                                            self.cfg.hu_window))
        return Cascade(self.contract, source, source, self.device, amp=self.cfg.amp, small_lesion_model=self._detector)

    def _validate(self, net: torch.nn.Module, val: list[ValidationCase], summary: dict | None = None) -> float:
        """Pooled Dice over the validation studies of what the *served* stage answers with ``net``
        (distributed: each rank takes its share of the studies, the counts are summed)."""
        mine = val[self.dist.rank::self.dist.world_size]
        inter, total = served_dice_counts(self._served(net, summary), self.cfg.stage, [(c.volume, c.label) for c in mine])
        inter, total = self.dist.sum(inter, total)
        return 1.0 if total == 0 else 2 * inter / total

    def _choose_postprocessing(self, net: torch.nn.Module, val: list[ValidationCase], result: "TrainResult") -> dict:
        """Serving choices made on the validation studies with the best network, then the reported Dice
        is re-measured with them (what is published is what was validated): the smallest lesion kept
        (lesion stage) or the probability the organ is cut at (organ stage).  Without validation
        studies the published model's earlier choice is kept."""
        if self.cfg.stage_spec.filters_components:
            return self._choose_lesion_filter(net, val, result)
        return self._choose_organ_threshold(net, val, result)

    def _previous_choice(self, key: str, result: "TrainResult"):
        if not result.warm_started:
            return None
        try:
            return read_checkpoint(self.model_path).summary.get(key)
        except CheckpointError:
            return None

    def _choose_organ_threshold(self, net: torch.nn.Module, val: list[ValidationCase], result: "TrainResult") -> dict:
        mirror = {MIRROR_AXES_KEY: list(ORGAN_MIRROR_AXES)}  # the recipe's test-time mirroring, served with it
        if not val:
            previous = self._previous_choice(ORGAN_THRESHOLD_KEY, result)
            return {**mirror, ORGAN_THRESHOLD_KEY: previous} if previous is not None else mirror
        curve = {t: round(self._validate(net, val, {**mirror, ORGAN_THRESHOLD_KEY: t}), 5) for t in ORGAN_THRESHOLDS}
        chosen = pick_organ_threshold(curve)
        result.best_metric = curve[chosen]
        self.progress(f"[{self.cfg.stage}] organ cut at probability {chosen} (chosen on validation); "
                      f"served validation Dice {result.best_metric}")
        return {**mirror, ORGAN_THRESHOLD_KEY: chosen, "organ_threshold_curve": {str(k): v for k, v in curve.items()}}

    def _choose_lesion_filter(self, net: torch.nn.Module, val: list[ValidationCase], result: "TrainResult") -> dict:
        # the recipe's test-time mirroring and organ-overlap filter, served with it
        recipe = {MIRROR_AXES_KEY: list(LESION_MIRROR_AXES), MIN_INSIDE_ORGAN_KEY: LESION_MIN_INSIDE_ORGAN}
        if not val:
            previous = {key: self._previous_choice(key, result)
                        for key in (MIN_LESION_ML_KEY, MIN_MEAN_PROBABILITY_KEY, NOISY_MIN_MEAN_PROBABILITY_KEY)}
            return {**recipe, **{k: v for k, v in previous.items() if v is not None}}
        cascade = self._served(net, recipe)
        size = choose_min_lesion_ml([component_table(cascade, c.volume, c.label, c.name) for c in val])
        post = {**recipe, **size.settings(MIN_LESION_ML_KEY)}
        confidence = choose_min_mean_probability(self._served(net, post), [(c.volume, c.label) for c in val],
                                                 organ_from_truth=True)
        post.update(confidence.settings())
        result.best_metric = round(self._validate(net, val, post), 5)
        noisy = (f", in a noisy study {confidence.noisy.chosen} ({confidence.noisy_studies} noisy validation studies)"
                 if confidence.noisy is not None else "")
        self.progress(f"[{self.cfg.stage}] smallest lesion kept: {size.chosen} ml, least mean probability kept: "
                      f"{confidence.routine.chosen}{noisy} (chosen on validation); served validation Dice {result.best_metric}")
        return post

    def fit(self, cases: Sequence[TrainingCase]) -> TrainResult:
        """Train, validate, publish; the run is tracked (MLflow) when a tracking store is set."""
        params = {k: v for k, v in asdict(self.cfg).items() if k != "spec"}
        self.tracker.start(self.cfg.stage, {**params, "network": self.cfg.spec.to_dict(), "cases": len(cases),
                                            "world_size": self.dist.world_size, "device": str(self.device)})
        try:
            result = self._fit(cases)
        except BaseException:
            self.tracker.finish("FAILED", {}, None)
            raise
        self.tracker.finish(result.status, {"best_metric": result.best_metric}, self.model_path)
        return result

    def _fit(self, cases: Sequence[TrainingCase]) -> TrainResult:
        cfg = self.cfg
        t_start = time.time()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        if not cases:
            raise ValueError(f"no labelled studies to train the {cfg.stage} stage on")
        train_cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.seed)
        result = TrainResult(
            cfg.stage, "RUNNING", 0, cfg.max_epochs, None, None,
            train_cases=[c.name for c in train_cases], val_cases=[c.name for c in val_cases],
            start_ts=int(t_start), model_path=str(self.model_path), device=str(self.device),
        )
        self._write_stats(result)
        self.progress(f"[{cfg.stage}] preparing {len(train_cases)} training + {len(val_cases)} validation studies")
        train = [prepare_case(c, cfg, self.contract) for c in train_cases]
        val = [ValidationCase(c.name, *read_case(c, self.contract)) for c in val_cases]

        net, result.warm_started = self._network()
        model = net
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(net, device_ids=[self.device] if self.device.type == "cuda" else None)
        optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=1e-5)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.max_epochs, eta_min=cfg.learning_rate * 0.05)
        loss_fn = BatchDiceCELoss(distributed=self.dist.active)
        augment = _augment(cfg.patch_size, cfg.stage_spec.positive_fraction, cfg.samples_per_volume)
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and cfg.amp
                                      and not torch.cuda.is_bf16_supported())
        best_state, best = None, -1.0
        rank, world = self.dist.rank, self.dist.world_size

        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            patches = []
            for i, case in enumerate(train):  # the same patches on every rank: seeded per study and epoch
                augment.set_random_state(seed=(cfg.seed * 1_000_003 + epoch * 10_007 + i) % 2**32)
                patches.extend(augment({"image": case.image, "label": case.target}))
            order = np.random.RandomState((cfg.seed * 7919 + epoch) % 2**32).permutation(len(patches))
            per_global = cfg.batch_size * world
            n_batches = len(order) // per_global if world > 1 else math.ceil(len(order) / per_global)
            losses = []
            for b in range(n_batches):
                mine = order[b * per_global:(b + 1) * per_global][rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
                batch = [patches[i] for i in mine]
                x = torch.stack([torch.as_tensor(p["image"]) for p in batch]).to(self.device, non_blocking=True)
                y = torch.stack([torch.as_tensor(p["label"]) for p in batch])
                weights = (small_lesion_weights(y, cfg.spacing, cfg.small_lesion_weight).to(self.device, non_blocking=True)
                           if cfg.small_lesion_weight > 1 else None)
                y = y.to(self.device, non_blocking=True)
                optimiser.zero_grad(set_to_none=True)
                with autocast_for(self.device, cfg.amp):
                    logits = model(x)
                loss = supervised_loss(loss_fn, logits.float(), y.float(), weights)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                losses.append(float(loss.detach()))
                if self.on_step is not None:
                    self.on_step(self.dist, epoch, b, losses[-1])
            if not losses:
                raise ValueError(f"{len(patches)} patches cannot fill one global batch of {per_global}")
            losses = [self.dist.sum(float(np.mean(losses)))[0] / world]
            scheduler.step()
            result.train_loss.append(round(float(np.mean(losses)), 5))
            metric = None
            if val and (epoch % cfg.val_every == 0 or epoch == cfg.max_epochs):
                metric = self._validate(net, val)
                result.val_dice.append(round(metric, 5))
            score = metric if metric is not None else (-result.train_loss[-1] if not val else None)
            if score is not None and score > best:
                best = score
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                result.best_metric = round(metric, 5) if metric is not None else None
                result.best_metric_epoch = epoch
            result.epochs_done = epoch
            result.total_time_s = time.time() - t_start
            self.tracker.epoch(epoch, {"train_loss": result.train_loss[-1], "val_dice": metric,
                                       "learning_rate": optimiser.param_groups[0]["lr"]})
            self.progress(
                f"[{cfg.stage}] epoch {epoch}/{cfg.max_epochs} loss {result.train_loss[-1]:.4f}"
                + (f" val Dice {metric:.4f}" if metric is not None else "")
                + f" ({result.total_time_s:.0f}s)"
            )
            self._write_stats(result)
            if self.dist.any(bool(cfg.max_minutes) and result.total_time_s > cfg.max_minutes * 60):
                result.message = f"stopped after {cfg.max_minutes} min time budget"
                break

        if best_state is None:
            best_state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        net.load_state_dict(best_state)
        post = self._choose_postprocessing(net, val, result)
        summary = {
            **post,
            "stage": cfg.stage,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()),
            "best_dice": result.best_metric,
            "best_epoch": result.best_metric_epoch,
            "epochs": result.epochs_done,
            "train_cases": result.train_cases,
            "val_cases": result.val_cases,
        }
        if self.dist.main:  # one publisher, at the end: a failed rank means nothing is published
            publish_checkpoint(Checkpoint(cfg.spec, best_state, tuple(cfg.spacing), summary, cfg.hu_window), self.model_path)
        self.dist.barrier()
        result.published = True
        result.status = "DONE"
        result.total_time_s = time.time() - t_start
        self._write_stats(result)
        self.progress(f"[{cfg.stage}] published {self.model_path} (best val Dice {result.best_metric})")
        return result


def train_on_rank(ctx: Distributed, cfg: TrainConfig, contract: LabelContract, model_path: Path,
                  stats_path: Path | None, cases: Sequence[TrainingCase], tracking_uri: str | None = None) -> None:
    """One rank of a distributed run (see :func:`radcascade.distributed.spawn`)."""
    Trainer(cfg, contract, model_path, stats_path, dist=ctx, tracking_uri=tracking_uri).fit(cases)


def cases_from_folder(studies: Path) -> list[TrainingCase]:
    """Labelled studies of a local datastore folder (labels in contract values)."""
    out = []
    for label in sorted((studies / "labels" / "final").glob("*.nii.gz")):
        image = studies / label.name
        if image.exists():
            out.append(TrainingCase(label.name[: -len(".nii.gz")], image, label))
    return out


LESION_NETWORKS = {"unet": LESION_UNET, "unet-fullres": FULLRES_LESION_UNET,
                   "resenc": RESENC_LESION_UNET}


def main(argv: list[str] | None = None) -> None:
    from radcascade.sample_data import (LESION_DIAMETER_MM, MALIGNANT_FRACTION, check_lesion_draw, generate_datastore,
                                        protocol_mix)

    p = argparse.ArgumentParser(description="Train the organ and lesion stages on a studies folder.")
    p.add_argument("--studies", type=Path, help="local datastore folder (images + labels/final)")
    p.add_argument("--generate", type=int, default=0, help="generate this many labelled studies instead")
    p.add_argument("--seed", type=int, default=1000, help="generator seed (never the sample set's 0)")
    p.add_argument("--low-dose-every", type=int, default=0,
                   help="with --generate: every N-th study low-dose (the held-out evaluation's mix is 4)")
    p.add_argument("--lesion-free-every", type=int, default=0,
                   help="with --generate: every N-th study without lesions (the held-out evaluation's mix is 8)")
    p.add_argument("--lesions", type=int, nargs=2, default=(0, 5), metavar=("MIN", "MAX"),
                   help="with --generate: lesions per study (more shows the lesion stage more small lesions)")
    p.add_argument("--lesion-diameter", type=float, nargs=2, default=LESION_DIAMETER_MM, metavar=("MIN", "MAX"),
                   help="with --generate: lesion diameters in mm, log-uniform in this range (narrower: more of the "
                        "sizes the lesion stage misses)")
    p.add_argument("--malignant-fraction", type=float, default=MALIGNANT_FRACTION,
                   help="with --generate: probability that a lesion is malignant")
    p.add_argument("--out", type=Path, required=True, help="folder for organ.pt / lesion.pt")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--lesion-epochs", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate,
                   help="peak learning rate (cosine decay to 5%%); lower it to fine-tune warm-started weights")
    p.add_argument("--val-every", type=int, default=1, help="validate (the served stage) every N epochs")
    p.add_argument("--cold", action="store_true", help="do not warm-start from existing weights")
    p.add_argument("--lesion-network", choices=sorted(LESION_NETWORKS), default=None,
                   help="lesion stage network: 'unet-fullres' (the committed one: MONAI's UNet with a full-resolution first "
                        "level), 'unet' (the same UNet halving the resolution in its first layer: the earlier "
                        "committed one, about 3x faster to train on a CPU) or 'resenc' (nnU-Net's residual encoder "
                        "with a full-resolution first level and deep supervision); default: the published model's, "
                        "else 'unet-fullres'")
    p.add_argument("--lesion-window", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="lesion stage: CT window (HU) its input is clipped and scaled with; default: the published "
                        "model's, else the stage's")
    p.add_argument("--small-lesion-weight", type=float, default=1.0,
                   help="lesion stage: cross-entropy weight of the voxels of a small lesion, at most this (1: off)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    studies = a.studies
    if a.generate:
        try:
            check_lesion_draw(tuple(a.lesion_diameter), a.malignant_fraction)
        except ValueError as e:
            p.error(str(e))
        studies = Path(tempfile.mkdtemp(prefix="radcascade-train-"))
        print(f"generating {a.generate} studies (seed {a.seed}) in {studies}", flush=True)
        low_dose, lesion_free = protocol_mix(a.generate, a.low_dose_every, a.lesion_free_every)
        generate_datastore(studies, a.generate, 0, seed=a.seed, prefix="train", low_dose=low_dose, lesion_free=lesion_free,
                           lesions=tuple(a.lesions), lesion_diameter_mm=tuple(a.lesion_diameter),
                           malignant_fraction=a.malignant_fraction)
    if studies is None:
        p.error("give --studies or --generate")
    cases = cases_from_folder(studies)
    contract = LabelContract()
    dist = init_from_env()  # under torchrun: this process's rank (see radcascade.distributed)
    try:
        for stage in a.stages:
            epochs = a.lesion_epochs if (stage == "lesion" and a.lesion_epochs) else a.epochs
            cfg = TrainConfig(stage=stage, max_epochs=epochs, max_minutes=a.max_minutes, warm_start=not a.cold,
                              learning_rate=a.learning_rate, val_every=a.val_every,
                              small_lesion_weight=a.small_lesion_weight if stage == "lesion" else 1.0,
                              spec=LESION_NETWORKS[a.lesion_network] if stage == "lesion" and a.lesion_network else None,
                              hu_window=a.lesion_window if stage == "lesion" else None)
            Trainer(cfg, contract, a.out / f"{stage}.pt", progress=lambda m: print(m, flush=True), dist=dist).fit(cases)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
