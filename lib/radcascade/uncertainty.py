"""Per-study uncertainty of the cascade, for active learning (which study teaches the models most).

* **epistemic**: Monte-Carlo dropout (the UNets carry dropout) -- voxel-wise binary entropy of the
  mean foreground probability over ``passes`` stochastic forward passes;
* **tta**: disagreement under test-time augmentation (flips on every axis, small intensity shifts)
  -- voxel-wise standard deviation of the foreground probability;
* **classifier**: mean normalised predictive entropy of the lesion classes.

Voxel figures are averaged **inside the organ region** (the predicted organ, dilated), so the large
empty background does not drown the signal. A study where stage 1 finds no organ scores 1.0 (the
maximum): the model clearly cannot handle it. Each score also carries the HU histogram inside the
predicted organ: with the scores, the cheap descriptor the ``combined`` strategy's diversity uses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from radcascade.cascade import Cascade
from radcascade.stages import OrganResult, window_logits
from radcascade.preprocessing import pad_to_multiple, resample
from radcascade.volumes import Volume


@dataclass
class StudyUncertainty:
    """Uncertainty scores of one study (higher = less certain); each in [0, 1]."""

    epistemic: float
    tta: float
    classifier: float
    organ_found: bool
    lesions: int
    histogram: tuple[float, ...] = ()  # HU histogram inside the predicted organ (fractions), for diversity
    # Per stage (``epistemic``/``tta`` are their weighted means, :data:`STAGE_WEIGHTS`); kept so a ranking
    # can weigh the stages otherwise without scoring again.
    epistemic_organ: float = 1.0
    epistemic_lesion: float = 1.0
    tta_organ: float = 1.0
    tta_lesion: float = 1.0

    def to_json(self) -> dict:
        d = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        d["histogram"] = [round(h, 4) for h in self.histogram]
        return d


@dataclass
class StageMaps:
    """One stage's voxel uncertainty on its own grid, and the organ region it is judged in."""

    mc_entropy: torch.Tensor  # binary entropy of the mean MC-dropout foreground probability, [0, 1]
    tta_spread: torch.Tensor  # 2 x std of the foreground probability over test-time augmentations, [0, 1]
    region: torch.Tensor  # bool: the (dilated) predicted organ on this stage's grid

    def aggregate(self, voxels: torch.Tensor) -> float:
        """The mean inside the region (0 for an empty region)."""
        return float(voxels[self.region].mean()) if self.region.any() else 0.0


@dataclass
class UncertaintyMaps:
    """Voxel-wise uncertainty of both segmentation stages for one study."""

    organ: StageMaps  # at the organ UNet's coarse spacing, whole volume
    lesion: StageMaps  # at the lesion UNet's spacing, inside the organ crop
    image: torch.Tensor  # [1, X, Y, Z] HU on the cascade's device
    organ_result: OrganResult  # the cascade's stage-1 result (reused for the full run)


# How much each stage's uncertainty counts in ``epistemic`` and ``tta`` (weights sum to 1).
STAGE_WEIGHTS = {"organ": 0.5, "lesion": 0.5}


# Bin edges (HU) of the organ histogram: fat/air, water-like lesions, parenchyma, enhancing tissue.
HISTOGRAM_EDGES_HU = (-50.0, 0.0, 25.0, 45.0, 60.0, 75.0, 100.0, 150.0)


def organ_histogram(image_hu: torch.Tensor, organ_mask: torch.Tensor) -> tuple[float, ...]:
    """Fractions of organ voxels per bin of :data:`HISTOGRAM_EDGES_HU` (below, between, above the edges)."""
    values = image_hu[organ_mask].float()
    if values.numel() == 0:
        return ()
    edges = torch.tensor(HISTOGRAM_EDGES_HU, device=values.device)
    counts = torch.bincount(torch.bucketize(values, edges), minlength=len(edges) + 1).float()
    return tuple(float(c) for c in counts / counts.sum())


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log()) / math.log(2)


def _dropout_on(net: torch.nn.Module):
    """Dropout layers in training mode, everything else (norms) in eval mode."""
    net.eval()
    for m in net.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Dropout3d)):
            m.train()


# Test-time augmentations: flips of each spatial axis of a [C, X, Y, Z] tensor, small intensity shifts.
TTA_FLIPS = ((), (1,), (2,), (3,))
TTA_SHIFTS = (0.0, 0.02, -0.02)


def _tta_inputs(x: torch.Tensor) -> torch.Tensor:
    """``[C, X, Y, Z]`` -> ``[len(TTA_FLIPS) * len(TTA_SHIFTS), C, X, Y, Z]``."""
    return torch.stack([(x.flip(f) if f else x) + shift for f in TTA_FLIPS for shift in TTA_SHIFTS])


def _tta_undo(probs: torch.Tensor) -> torch.Tensor:
    """Flip each augmented output ``[N, X, Y, Z]`` back to the original orientation."""
    per_input = [f for f in TTA_FLIPS for _ in TTA_SHIFTS]
    return torch.stack([p.flip(tuple(d - 1 for d in f)) if f else p for p, f in zip(probs, per_input)])


class CascadeUncertainty:
    """Scores studies with the cascade's warm models (no reloading, same device).

    The MC-dropout passes and the test-time augmentations of a stage go through the network as
    batches of up to ``batch`` inputs (one forward, or one sliding-window sweep, per batch)."""

    def __init__(self, cascade: Cascade, passes: int = 6, seed: int = 0, batch: int = 12):
        self.cascade = cascade
        self.passes = passes
        self.seed = seed
        self.batch = max(1, batch)

    def _batched(self, run, inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat([run(inputs[i:i + self.batch]) for i in range(0, len(inputs), self.batch)])

    def _inputs(self, x: torch.Tensor, mc: bool) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.passes, *x.shape) if mc else _tta_inputs(x)

    @torch.no_grad()
    def _organ_probs(self, net, x: torch.Tensor, divisor: int, mc: bool) -> torch.Tensor:
        xp, back = pad_to_multiple(x, divisor)
        if mc:
            _dropout_on(net)
        try:
            probs = self._batched(lambda b: torch.softmax(net(b).float(), 1)[:, 1], self._inputs(xp, mc))
        finally:
            net.eval()
        probs = probs if mc else _tta_undo(probs)
        return probs[(slice(None), *back[1:])]

    @torch.no_grad()
    def _lesion_probs(self, net, x: torch.Tensor, roi, mc: bool) -> torch.Tensor:
        def run(b: torch.Tensor) -> torch.Tensor:
            logits = window_logits(net, b, roi, self.batch)
            return torch.softmax(logits.float(), 1)[:, 1]

        if mc:
            _dropout_on(net)
        try:
            probs = self._batched(run, self._inputs(x, mc))
        finally:
            net.eval()
        return probs if mc else _tta_undo(probs)

    def maps(self, volume: Volume) -> UncertaintyMaps | None:
        """Voxel-wise uncertainty of both stages (``None`` when stage 1 finds no organ)."""
        torch.manual_seed(self.seed)
        c = self.cascade
        organ_model = c.organ_model.get()
        lesion_model = c.lesion_model.get()
        if organ_model is None or lesion_model is None:
            raise RuntimeError("uncertainty needs trained organ and lesion models")
        image = torch.from_numpy(volume.array).to(c.device).unsqueeze(0)
        organ = c.organ_stage(image, volume.spacing)
        if not organ.found:
            return None
        # Stage 1 at its coarse grid, restricted to the (dilated) predicted organ.
        organ_spec = c.organ_stage.spec
        whole = organ_spec.region(volume.shape, volume.spacing, None)
        xc = organ_spec.prepare_for(organ_model.checkpoint, image, volume.spacing, whole)
        coarse_shape = tuple(xc.shape[1:])
        div = organ_model.checkpoint.spec.divisor
        organ_full = self._organ_mask_full(organ, volume.shape, image.device)
        region_c = resample(organ_full.float()[None], coarse_shape)[0] > 0.05
        region_c = torch.from_numpy(ndimage.binary_dilation(region_c.cpu().numpy(), iterations=2)).to(image.device)
        mc_o = self._organ_probs(organ_model.network, xc, div, mc=True)
        tta_o = self._organ_probs(organ_model.network, xc, div, mc=False)
        # Stage 2 on its crop at fine spacing, restricted to the organ inside the crop.
        box = c.lesion_stage.crop_box(organ.box, volume.spacing, volume.shape)
        xf = c.lesion_stage.spec.prepare_for(lesion_model.checkpoint, image, volume.spacing, box)
        fine_shape = tuple(xf.shape[1:])
        region_f = F.max_pool3d(resample(organ_full[box.slices].float()[None], fine_shape)[None], 3, 1, 1)[0, 0] > 0.05
        roi = c.lesion_stage.window(fine_shape, lesion_model.checkpoint.spec.divisor)
        mc_l = self._lesion_probs(lesion_model.network, xf, roi, mc=True)
        tta_l = self._lesion_probs(lesion_model.network, xf, roi, mc=False)
        return UncertaintyMaps(
            organ=StageMaps(_binary_entropy(mc_o.mean(0)), tta_o.std(0) * 2, region_c),  # std <= 0.5: scale to [0, 1]
            lesion=StageMaps(_binary_entropy(mc_l.mean(0)), tta_l.std(0) * 2, region_f),
            image=image, organ_result=organ)

    def score(self, volume: Volume, maps: UncertaintyMaps | None = None) -> StudyUncertainty:
        """The study's stored scores; ``maps`` reuses :meth:`maps` already computed for ``volume``."""
        maps = maps if maps is not None else self.maps(volume)
        if maps is None:
            return StudyUncertainty(1.0, 1.0, 1.0, False, 0)
        c = self.cascade
        per_stage = {f"{kind}_{stage}": m.aggregate(m.mc_entropy if kind == "epistemic" else m.tta_spread)
                     for stage, m in (("organ", maps.organ), ("lesion", maps.lesion)) for kind in ("epistemic", "tta")}
        epistemic, tta = (sum(w * per_stage[f"{kind}_{stage}"] for stage, w in STAGE_WEIGHTS.items())
                          for kind in ("epistemic", "tta"))
        image, organ = maps.image, maps.organ_result
        result = c.run(volume, organ=organ)
        # The classifier's entropy per lesion comes with the cascade's run (any classifier kind).
        cls = 0.0 if result.provisional_classes or not result.lesions else float(
            np.mean([f.uncertainty.get("entropy", 0.0) for f in result.lesions]))
        histogram = organ_histogram(image[0][organ.box.slices], organ.mask)
        return StudyUncertainty(epistemic, tta, cls, True, len(result.lesions), histogram, **per_stage)

    @staticmethod
    def _organ_mask_full(organ, shape, device) -> torch.Tensor:
        full = torch.zeros(shape, dtype=torch.bool, device=device)
        full[organ.box.slices] = organ.mask
        return full
