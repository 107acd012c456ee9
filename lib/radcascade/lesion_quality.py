"""Lesion quality as a radiologist would judge it, measured on the served pipeline.

A fixed held-out set of generated studies (seed :data:`HELD_OUT_SEED`, never used for training;
standard and low-dose protocols, a few lesion-free studies) is written to disk as NIfTI and run
through :class:`~radcascade.cascade.Cascade` exactly as ``/infer/cascade`` runs it (file -> volume ->
organ -> lesion -> post-processing).  Per study: organ Dice, lesion Dice (all classes merged), every
true lesion's equivalent diameter and whether it was detected (IoU >= 0.1 with a predicted lesion,
:func:`radcascade.evaluation.match_lesions`), and the false positives.  Summaries carry bootstrap
95% confidence intervals over studies (the unit a radiologist reads).

The command that runs it and records the results is ``benchmarks/lesion_quality.py``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from radcascade.cascade import (
    MIN_MEAN_PROBABILITY_CANDIDATES,
    MIN_MEAN_PROBABILITY_KEY,
    NOISY_MIN_MEAN_PROBABILITY_KEY,
    organ_from_label,
)
from radcascade.evaluation import dice, match_lesions
from radcascade.labels import DEFAULT_LESION_CLASSES, FIRST_LESION_VALUE, ORGAN_VALUE
from radcascade.preprocessing import NOISY_STUDY_NOISE_HU
from radcascade.sample_data import generate_datastore, protocol_mix
from radcascade.volumes import load_label_for, load_volume

HELD_OUT_SEED = 5000
VALIDATION_SEED = 6000  # studies for choosing post-processing: neither training (1000) nor held-out
SIZE_BANDS_MM = ((0.0, 10.0, "<10 mm"), (10.0, 20.0, "10-20 mm"), (20.0, math.inf, ">20 mm"))
# A lesion whose mean differs from the organ around it by less than this reads as near-isodense: a
# radiologist finds it by texture, rim or mass effect rather than by its density.
ISODENSE_HU = 10.0
# Rose's criterion: a uniform lesion of contrast C over N voxels in white noise of std sigma has an
# ideal-observer signal-to-noise ratio C / sigma * sqrt(N); under about 5 even an ideal reader cannot tell it
# from the noise without false alarms. A lesion that is not uniform (a dark core inside a bright rim, whose
# mean can equal the organ's) is seen by its pattern, not its mean: the ideal observer (a matched filter that
# knows the lesion) has SNR sqrt(sum of (voxel - organ)^2) / sigma, which is Rose's for a uniform lesion and
# never less. It is estimated on the noisy image (see :func:`ideal_observer_snr`). The ratio counts only the
# voxel noise the cascade measures, not the organ's own texture or the scanner's blur, so it overstates how
# visible a faint lesion is: a lesion under the criterion is invisible, one over it is not necessarily easy.
ROSE_SNR = 5.0
MIN_IOU = 0.1


@dataclass(frozen=True)
class HeldOutSet:
    """Where the held-out studies are and how they were made."""

    folder: Path
    names: list[str]
    protocols: dict[str, str]
    seed: int

    def paths(self, name: str) -> tuple[Path, Path]:
        """The study's image and its label (contract values)."""
        return self.folder / f"{name}.nii.gz", self.folder / "labels" / "final" / f"{name}.nii.gz"

    def cases(self) -> list[tuple]:
        """Every study as ``(volume, contract label)``, read once."""
        out = []
        for name in self.names:
            image, label = self.paths(name)
            volume = load_volume(image)
            out.append((volume, load_label_for(label, volume)))
        return out


def make_held_out_set(folder: Path, n_studies: int = 48, seed: int = HELD_OUT_SEED, low_dose_every: int = 4,
                      lesion_free_every: int = 8, shape=None, spacing=None) -> HeldOutSet:
    """Generate the held-out set: every ``low_dose_every``-th study low-dose, every
    ``lesion_free_every``-th (offset by 1) lesion-free, the rest routine studies with 0-5 lesions."""
    low_dose, lesion_free = protocol_mix(n_studies, low_dose_every, lesion_free_every)
    kwargs = {k: v for k, v in {"shape": shape, "spacing": spacing}.items() if v is not None}
    studies = generate_datastore(folder, n_studies, 0, seed=seed, prefix="heldout", lesion_free=lesion_free,
                                 low_dose=low_dose, **kwargs)
    protocols = {s.name: ("low-dose" if i in low_dose else "standard") for i, s in enumerate(studies)}
    return HeldOutSet(Path(folder), [s.name for s in studies], protocols, seed)


def equivalent_diameter_mm(volume_ml):
    """Diameter of the sphere of the same volume (ml -> mm); works on arrays."""
    return (6 * np.asarray(volume_ml, np.float64) * 1000 / math.pi) ** (1 / 3)


@dataclass
class StudyOutcome:
    """One study through the served cascade, compared with its truth."""

    name: str
    protocol: str
    organ_dice: float
    lesion_intersection: int  # voxels, all lesion classes merged (for pooled Dice)
    lesion_truth_voxels: int
    lesion_predicted_voxels: int
    true_diameters_mm: list[float] = field(default_factory=list)
    detected: list[bool] = field(default_factory=list)
    false_positives: int = 0
    latency_s: float = 0.0
    true_contrast_hu: list[float] = field(default_factory=list)  # |lesion mean - organ around it|, per lesion
    true_classes: list[int] = field(default_factory=list)  # label value of each true lesion
    image_noise_hu: float | None = None  # the noise the cascade measured in its organ (None: no organ)
    true_voxels: list[int] = field(default_factory=list)  # voxels of each true lesion
    # per true lesion, sum of (HU - organ ring mean)^2 over its voxels (see describe_true_lesions)
    true_squared_deviation_hu2: list[float] = field(default_factory=list)

    @property
    def lesion_dice(self) -> float | None:
        """Per-study lesion Dice; None when the study has no true and no predicted lesion."""
        total = self.lesion_truth_voxels + self.lesion_predicted_voxels
        return 2 * self.lesion_intersection / total if total else None


def evaluate_study(cascade, image: Path, label: Path, protocol: str = "standard") -> StudyOutcome:
    """Run the cascade on ``image`` as the server does and compare with ``label`` (contract values)."""
    t0 = time.perf_counter()
    volume = load_volume(image)
    result = cascade.run(volume)
    latency = time.perf_counter() - t0
    truth = load_label_for(label, volume)
    pred_lesion, true_lesion = result.label >= FIRST_LESION_VALUE, truth >= FIRST_LESION_VALUE
    match = match_lesions(pred_lesion, true_lesion, MIN_IOU)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    diameters = [round(float(d), 2) for d in equivalent_diameter_mm(match.true_voxels * voxel_ml)]
    true_lesions = describe_true_lesions(volume.array, truth)
    name = Path(image).name.split(".")[0]
    return StudyOutcome(
        name=name, protocol=protocol,
        organ_dice=dice(result.label >= ORGAN_VALUE, truth >= ORGAN_VALUE),
        lesion_intersection=int(np.logical_and(pred_lesion, true_lesion).sum()),
        lesion_truth_voxels=int(true_lesion.sum()), lesion_predicted_voxels=int(pred_lesion.sum()),
        true_diameters_mm=diameters, detected=[bool(d) for d in match.true_detected],
        false_positives=int((~match.predicted_hit).sum()), latency_s=round(latency, 4),
        true_contrast_hu=[round(t.contrast_hu, 1) for t in true_lesions],
        true_classes=[t.value for t in true_lesions],
        true_squared_deviation_hu2=[round(t.squared_deviation_hu2, 1) for t in true_lesions],
        image_noise_hu=None if result.image_noise_hu is None else round(result.image_noise_hu, 1),
        true_voxels=[int(v) for v in match.true_voxels],
    )


@dataclass(frozen=True)
class LesionAppearance:
    """How one true lesion stands out from the organ around it."""

    contrast_hu: float  # |lesion mean - organ ring mean|; nan where no organ voxel touches it
    value: int  # the label value painted on most of it (its class)
    squared_deviation_hu2: float  # sum over its voxels of (HU - organ ring mean)^2; nan as contrast_hu


def describe_true_lesions(hu: np.ndarray, label: np.ndarray, ring_voxels: int = 2) -> list[LesionAppearance]:
    """Per true lesion (numbered as :func:`radcascade.evaluation.match_lesions` numbers them): its contrast,
    the absolute difference between its mean HU and the mean HU of the organ in a ring of ``ring_voxels``
    around it (another lesion in the ring is left out), the sum of its voxels' squared deviations from that
    ring mean (the ideal observer's signal energy plus the noise's), and its class."""
    structure = np.ones((3, 3, 3), bool)
    lesions, n = ndimage.label(label >= FIRST_LESION_VALUE, structure)
    out = []
    for i, sl in enumerate(ndimage.find_objects(lesions), start=1):
        grown = tuple(slice(max(0, s.start - ring_voxels), s.stop + ring_voxels) for s in sl)
        own = lesions[grown] == i
        ring = ndimage.binary_dilation(own, structure, iterations=ring_voxels) & ~own & (label[grown] == ORGAN_VALUE)
        value = int(np.bincount(label[grown][own]).argmax())
        if not ring.any():
            out.append(LesionAppearance(math.nan, value, math.nan))
            continue
        inside, organ = hu[grown][own].astype(np.float64), float(hu[grown][ring].mean())
        out.append(LesionAppearance(abs(float(inside.mean()) - organ), value, float(((inside - organ) ** 2).sum())))
    return out


def ideal_observer_snr(squared_deviation_hu2: float, voxels: float, noise_hu: float) -> float:
    """The ideal observer's SNR for a lesion, estimated on the noisy image: its voxels' squared deviations
    from the organ hold the signal's energy plus, on average, ``voxels * noise_hu**2`` of noise, so the
    signal's energy over the noise variance is their sum / noise_hu**2 - voxels (clipped at 0; the estimate
    scatters by about sqrt(2 * voxels) in that unit: about +-1 at an SNR of 5 for a 10 mm lesion)."""
    if not noise_hu > 0:
        return math.nan
    return math.sqrt(max(0.0, squared_deviation_hu2 / noise_hu**2 - voxels))


def evaluate(cascade, held_out: HeldOutSet, progress: Callable[[str], None] = print) -> list[StudyOutcome]:
    out = []
    for name in held_out.names:
        image, label = held_out.paths(name)
        out.append(evaluate_study(cascade, image, label, held_out.protocols.get(name, "standard")))
        o = out[-1]
        progress(f"{name} ({o.protocol}): organ {o.organ_dice:.3f}, lesions {sum(o.detected)}/{len(o.detected)}, "
                 f"FP {o.false_positives}, {o.latency_s:.2f} s")
    return out


# -- summary statistics ------------------------------------------------------------------------
@dataclass(frozen=True)
class TrueLesion:
    """One true lesion of an outcome, as the recall rows select it."""

    diameter_mm: float
    detected: bool
    contrast_hu: float  # nan where unknown
    value: int | None  # label value (class)
    noise_hu: float  # the study's image noise; nan where unknown
    voxels: float  # nan where unknown
    squared_deviation_hu2: float = math.nan  # nan where unknown (results written before it was recorded)

    @property
    def contrast_to_noise(self) -> float:
        return self.contrast_hu / self.noise_hu if self.noise_hu > 0 else math.nan

    @property
    def rose_snr(self) -> float:
        """The ideal observer's signal-to-noise ratio (see :data:`ROSE_SNR`); from the mean contrast alone
        (Rose's uniform lesion) where the squared deviations were not recorded."""
        if math.isnan(self.squared_deviation_hu2):
            return self.contrast_to_noise * math.sqrt(self.voxels)
        return ideal_observer_snr(self.squared_deviation_hu2, self.voxels, self.noise_hu)


def _true_lesions(outcomes: Sequence[StudyOutcome]):
    for o in outcomes:
        contrasts = o.true_contrast_hu or [math.nan] * len(o.detected)
        values = o.true_classes or [None] * len(o.detected)
        noise = math.nan if o.image_noise_hu is None else o.image_noise_hu
        voxels = o.true_voxels or [math.nan] * len(o.detected)
        deviations = o.true_squared_deviation_hu2 or [math.nan] * len(o.detected)
        for size, d, c, v, n, e in zip(o.true_diameters_mm, o.detected, contrasts, values, voxels, deviations):
            yield TrueLesion(size, d, c, v, noise, n, e)


def _isodense(t: TrueLesion) -> bool:
    return t.contrast_hu < ISODENSE_HU


def _fainter_than_noise(t: TrueLesion) -> bool:
    return t.contrast_to_noise < 1


def _under_rose(t: TrueLesion) -> bool:
    return t.rose_snr < ROSE_SNR


def _band_recall(outcomes: Sequence[StudyOutcome], lo: float, hi: float,
                 keep: Callable[[TrueLesion], bool] = lambda _: True) -> tuple[float | None, int]:
    """Recall of the true lesions of ``lo`` <= diameter < ``hi`` mm that ``keep`` selects, and their number."""
    hits = [t.detected for t in _true_lesions(outcomes) if lo <= t.diameter_mm < hi and keep(t)]
    return (sum(hits) / len(hits) if hits else None), len(hits)


# the held-out set is generated with the default label contract: its lesion classes, by label value
_CLASSES = {FIRST_LESION_VALUE + i: name.removeprefix("lesion ") for i, name in enumerate(DEFAULT_LESION_CLASSES)}


def _pooled_dice(outcomes: Sequence[StudyOutcome]) -> float | None:
    total = sum(o.lesion_truth_voxels + o.lesion_predicted_voxels for o in outcomes)
    return 2 * sum(o.lesion_intersection for o in outcomes) / total if total else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


METRICS: dict[str, Callable[[Sequence[StudyOutcome]], float | None]] = {
    **{f"recall {label}": (lambda os, lo=lo, hi=hi: _band_recall(os, lo, hi)[0]) for lo, hi, label in SIZE_BANDS_MM},
    "recall >=10 mm": lambda os: _band_recall(os, 10.0, math.inf)[0],
    "recall (all)": lambda os: _band_recall(os, 0.0, math.inf)[0],
    f"recall >=10 mm, contrast <{ISODENSE_HU:g} HU": lambda os: _band_recall(os, 10.0, math.inf, _isodense)[0],
    f"recall >=10 mm, contrast >={ISODENSE_HU:g} HU": lambda os: _band_recall(os, 10.0, math.inf, lambda t: t.contrast_hu >= ISODENSE_HU)[0],
    # contrast against the study's voxel noise: a lesion fainter than the noise of one voxel is hard for any reader
    "recall >=10 mm, contrast < noise": lambda os: _band_recall(os, 10.0, math.inf, _fainter_than_noise)[0],
    "recall >=10 mm, contrast >= noise": lambda os: _band_recall(os, 10.0, math.inf, lambda t: t.contrast_to_noise >= 1)[0],
    # the same by Rose's criterion, which also counts the lesion's size (nan, so neither row, where unknown)
    f"recall >=10 mm, Rose SNR <{ROSE_SNR:g}": lambda os: _band_recall(os, 10.0, math.inf, _under_rose)[0],
    f"recall >=10 mm, Rose SNR >={ROSE_SNR:g}": lambda os: _band_recall(os, 10.0, math.inf, lambda t: t.rose_snr >= ROSE_SNR)[0],
    **{f"recall 10-20 mm, {name}": (lambda os, v=v: _band_recall(os, 10.0, 20.0, lambda t: t.value == v)[0])
       for v, name in _CLASSES.items()},
    "false positives / study": lambda os: float(np.mean([o.false_positives for o in os])) if os else None,
    "lesion Dice (pooled)": _pooled_dice,
    "lesion Dice (mean per study)": lambda os: _mean(o.lesion_dice for o in os if o.lesion_truth_voxels),
    "organ Dice (mean)": lambda os: _mean(o.organ_dice for o in os),
    "latency s (mean)": lambda os: _mean(o.latency_s for o in os),
}


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None  # bootstrap 2.5th percentile
    high: float | None  # bootstrap 97.5th percentile

    def text(self, digits: int = 3) -> str:
        if self.value is None:
            return "–"
        ci = "" if self.low is None else f" [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return f"{self.value:.{digits}f}{ci}"


def bootstrap(outcomes: Sequence[StudyOutcome], metric: Callable, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """The metric on all studies, with a 95% percentile interval from resampling studies."""
    value = metric(outcomes)
    if value is None or len(outcomes) < 2:
        return Estimate(value, None, None)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        sample = [outcomes[i] for i in rng.integers(0, len(outcomes), len(outcomes))]
        v = metric(sample)
        if v is not None:
            draws.append(v)
    lo, hi = np.percentile(draws, [2.5, 97.5]) if draws else (None, None)
    return Estimate(value, float(lo), float(hi))


@dataclass
class QualityReport:
    studies: int
    lesions: int
    lesions_by_band: dict[str, int]
    metrics: dict[str, Estimate]
    by_protocol: dict[str, dict[str, Estimate]]

    def to_json(self) -> dict:
        return asdict(self)


def summarise(outcomes: Sequence[StudyOutcome], n_boot: int = 1000, seed: int = 0) -> QualityReport:
    bands = {label: _band_recall(outcomes, lo, hi)[1] for lo, hi, label in SIZE_BANDS_MM}
    bands[f">=10 mm and <{ISODENSE_HU:g} HU"] = _band_recall(outcomes, 10.0, math.inf, _isodense)[1]
    bands[">=10 mm and < noise"] = _band_recall(outcomes, 10.0, math.inf, _fainter_than_noise)[1]
    bands[f">=10 mm and Rose SNR <{ROSE_SNR:g}"] = _band_recall(outcomes, 10.0, math.inf, _under_rose)[1]
    metrics = {name: bootstrap(outcomes, fn, n_boot, seed) for name, fn in METRICS.items()}
    by_protocol = {}
    for protocol in sorted({o.protocol for o in outcomes}):
        subset = [o for o in outcomes if o.protocol == protocol]
        by_protocol[protocol] = {name: bootstrap(subset, fn, n_boot, seed) for name, fn in METRICS.items()}
    return QualityReport(len(outcomes), sum(len(o.detected) for o in outcomes), bands, metrics, by_protocol)


def markdown_table(reports: dict[str, QualityReport]) -> str:
    """One column per evaluated model set, one row per metric (value [95% CI])."""
    names = list(reports)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in METRICS:
        lines.append(f"| {metric} | " + " | ".join(reports[n].metrics[metric].text() for n in names) + " |")
    lines.append("| studies / lesions | " + " | ".join(f"{r.studies} / {r.lesions}" for r in reports.values()) + " |")
    lines.append("| lesions per band | " + " | ".join(
        ", ".join(f"{k}: {v}" for k, v in r.lesions_by_band.items()) for r in reports.values()) + " |")
    return "\n".join(lines)


# -- choosing the smallest lesion kept, on validation studies (nnU-Net-style post-processing) -------
MIN_LESION_ML_CANDIDATES = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


@dataclass
class ComponentTable:
    """One study's lesion-stage components before any size filter, and their overlap with the truth."""

    name: str
    predicted_ml: np.ndarray  # volume of each predicted component
    true_diameters_mm: np.ndarray
    iou: np.ndarray  # [true, predicted]

    def detection(self, min_ml: float) -> tuple[np.ndarray, int]:
        """Per true lesion: detected by a kept component; and the number of kept false positives."""
        kept = self.predicted_ml >= min_ml
        hits = self.iou[:, kept] >= MIN_IOU
        return hits.any(axis=1), int((~hits.any(axis=0)).sum())


def component_table(cascade, volume, label: np.ndarray, name: str) -> ComponentTable:
    """Run the lesion stage as served, inside the true organ (the stage judged alone), keep every component."""
    organ = organ_from_label(label >= ORGAN_VALUE, cascade.device)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    structure = np.ones((3, 3, 3), bool)
    truth, n_true = ndimage.label(label >= FIRST_LESION_VALUE, structure)
    true_ml = np.bincount(truth.ravel(), minlength=n_true + 1)[1:] * voxel_ml
    diameters = equivalent_diameter_mm(true_ml)
    if organ is None:
        return ComponentTable(name, np.zeros(0), diameters, np.zeros((n_true, 0)))
    image = torch.from_numpy(volume.array).to(cascade.device).unsqueeze(0)
    lesion = cascade.lesion_stage(image, volume.spacing, organ)
    pred = np.zeros(volume.shape, bool)
    pred[lesion.box.slices] = lesion.mask.cpu().numpy()
    comps, n_pred = ndimage.label(pred, structure)
    pred_size = np.bincount(comps.ravel(), minlength=n_pred + 1)
    iou = np.zeros((n_true, n_pred))
    both = (truth > 0) & (comps > 0)
    if both.any():
        pairs, inter = np.unique(np.stack([truth[both], comps[both]]), axis=1, return_counts=True)
        t_size = np.bincount(truth.ravel(), minlength=n_true + 1)
        iou[pairs[0] - 1, pairs[1] - 1] = inter / (t_size[pairs[0]] + pred_size[pairs[1]] - inter)
    return ComponentTable(name, pred_size[1:] * voxel_ml, diameters, iou)


@dataclass(frozen=True)
class FilterChoice:
    """Detection at each candidate threshold, and the one chosen."""

    chosen: float  # the smallest lesion kept (ml), or the least mean probability
    curve: dict[float, dict[str, float]]  # threshold -> recall (all, >= 10 mm), false positives per study

    def settings(self, key: str) -> dict:
        """Model-file summary entries: the choice under ``key``, its curve under ``<key>_curve``."""
        return {key: self.chosen, f"{key}_curve": {str(k): v for k, v in self.curve.items()}}


def _detection_point(detected10: int, n10: int, detected: int, n: int, fps: int, studies: int) -> dict[str, float]:
    return {"recall": detected / n if n else 0.0, "recall_ge_10mm": detected10 / n10 if n10 else 0.0,
            "false_positives_per_study": fps / max(1, studies)}


def _pick(scores: dict[float, tuple[int, int]]) -> float:
    """The rule both post-processing choices follow. ``scores``: candidate -> (lesions >= 10 mm detected,
    lesions detected - false positives). Among the candidates that keep the most lesions of >= 10 mm (the
    ones that matter clinically; never traded for fewer false positives), the one with the most (lesions
    detected - false positives); on a tie the smallest (the least filtering)."""
    best10 = max(s[0] for s in scores.values())
    return max((c for c in scores if scores[c][0] == best10), key=lambda c: (scores[c][1], -c))


def choose_min_lesion_ml(tables: Sequence[ComponentTable], candidates=MIN_LESION_ML_CANDIDATES) -> FilterChoice:
    """The smallest lesion kept, by :func:`_pick`'s rule."""
    curve, scores = {}, {}
    for min_ml in candidates:
        detected = fps = n = n10 = detected10 = 0
        for t in tables:
            hit, fp = t.detection(min_ml)
            detected, fps, n = detected + int(hit.sum()), fps + fp, n + len(hit)
            big = t.true_diameters_mm >= 10.0
            n10, detected10 = n10 + int(big.sum()), detected10 + int(hit[big].sum())
        curve[min_ml] = _detection_point(detected10, n10, detected, n, fps, len(tables))
        scores[min_ml] = (detected10, detected - fps)
    return FilterChoice(_pick(scores), curve)


@dataclass(frozen=True)
class ConfidenceChoice:
    """The least mean probability of a lesion kept, chosen apart for routine and noisy studies."""

    routine: FilterChoice
    noisy: FilterChoice | None  # None: no noisy validation study, noisy studies get the routine cut
    noisy_studies: int = 0

    def settings(self) -> dict:
        """Model-file summary entries: both cuts and their curves (the noisy ones only where chosen)."""
        out = self.routine.settings(MIN_MEAN_PROBABILITY_KEY)
        if self.noisy is not None:
            out.update(self.noisy.settings(NOISY_MIN_MEAN_PROBABILITY_KEY))
        return out


def choose_min_mean_probability(cascade, cases: Sequence[tuple], organ_from_truth: bool = False,
                                candidates=MIN_MEAN_PROBABILITY_CANDIDATES) -> ConfidenceChoice:
    """The least mean lesion probability of a lesion kept, by :func:`_pick`'s rule, on ``cases`` of
    ``(volume, contract label)`` run through the served cascade (its other filters as they are; with
    ``organ_from_truth`` inside the true organ, as the trainer validates the lesion stage alone): once on
    the routine studies and once on the noisy ones, told apart by the image noise the cascade measures."""
    before = cascade.min_mean_probability, cascade.min_mean_probability_noisy
    runs = {}
    try:
        for t in candidates:
            cascade.min_mean_probability = cascade.min_mean_probability_noisy = t
            runs[t] = [_detections(cascade, volume, label, organ_from_truth) for volume, label in cases]
    finally:
        cascade.min_mean_probability, cascade.min_mean_probability_noisy = before
    noisy = [noise is not None and noise >= NOISY_STUDY_NOISE_HU for _, noise in runs[candidates[0]]] if cases else []
    routine_choice = _choose_cut({t: [c for (c, _), n in zip(per, noisy) if not n] for t, per in runs.items()})
    noisy_choice = _choose_cut({t: [c for (c, _), n in zip(per, noisy) if n] for t, per in runs.items()})
    return ConfidenceChoice(routine_choice, noisy_choice if any(noisy) else None, sum(noisy))


def _choose_cut(runs: dict[float, list[tuple]]) -> FilterChoice:
    """:func:`_pick`'s choice from each candidate's per-study detection counts (see :func:`_detections`)."""
    curve, scores = {}, {}
    for t, per_study in runs.items():
        sums = np.sum(per_study, axis=0) if per_study else np.zeros(5, int)
        detected10, n10, detected, n, fps = (int(v) for v in sums)
        curve[t] = _detection_point(detected10, n10, detected, n, fps, len(per_study))
        scores[t] = (detected10, detected - fps)
    return FilterChoice(_pick(scores), curve)


def _detections(cascade, volume, label: np.ndarray, organ_from_truth: bool) -> tuple[tuple, float | None]:
    """One study's counts (lesions >= 10 mm detected, lesions >= 10 mm, detected, lesions, false positives)
    and its image noise in HU (as the cascade measured it)."""
    organ = organ_from_label(label >= ORGAN_VALUE, cascade.device) if organ_from_truth else None
    if organ_from_truth and organ is None:
        return (0, 0, 0, 0, 0), None
    result = cascade.run(volume, organ=organ)
    match = match_lesions(result.label >= FIRST_LESION_VALUE, label >= FIRST_LESION_VALUE, MIN_IOU)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    big = equivalent_diameter_mm(match.true_voxels * voxel_ml) >= 10.0
    hit = np.asarray(match.true_detected, bool)
    counts = (int(hit[big].sum()), int(big.sum()), int(hit.sum()), len(hit), int((~np.asarray(match.predicted_hit, bool)).sum()))
    return counts, result.image_noise_hu


def choose_on_validation(cascade, folder: Path, n_studies: int = 20, seed: int = VALIDATION_SEED) -> FilterChoice:
    """Generate validation studies (same mix as the held-out set) and choose the smallest lesion kept on them."""
    held = make_held_out_set(folder, n_studies, seed)
    return choose_min_lesion_ml([component_table(cascade, volume, label, name)
                                 for name, (volume, label) in zip(held.names, held.cases())])


def confidence_on_validation(cascade, folder: Path, n_studies: int = 40, seed: int = VALIDATION_SEED) -> ConfidenceChoice:
    """Generate validation studies (same mix as the held-out set) and choose the least mean probability of a
    lesion kept on them, through the served cascade."""
    return choose_min_mean_probability(cascade, make_held_out_set(folder, n_studies, seed).cases())


def _rewrite_summary(model_path: Path, rewrite: Callable[[dict], dict]) -> None:
    """Replace a model file's summary by ``rewrite(summary)``, atomically; the weights are unchanged."""
    from dataclasses import replace

    from radcascade.checkpoints import publish_checkpoint, read_checkpoint

    ckpt = read_checkpoint(model_path)
    publish_checkpoint(replace(ckpt, summary=rewrite(dict(ckpt.summary))), model_path)


def record_choice(model_path: Path, choice: FilterChoice, source: str) -> None:
    """Write the smallest lesion kept, its curve and where it was chosen into a lesion model file's summary."""
    from radcascade.cascade import MIN_LESION_ML_KEY

    _rewrite_summary(model_path, lambda summary: {**summary, **choice.settings(MIN_LESION_ML_KEY),
                                                  f"{MIN_LESION_ML_KEY}_source": source})


def record_confidence(model_path: Path, choice: ConfidenceChoice, source: str) -> None:
    """Write both confidence cuts, their curves and where they were chosen into a lesion model file's summary.
    Without a noisy choice an earlier one is removed: noisy studies then get the routine cut, as nothing was
    measured for them with this model."""
    def rewrite(summary: dict) -> dict:
        summary = {k: v for k, v in summary.items() if not k.startswith(NOISY_MIN_MEAN_PROBABILITY_KEY)}
        summary.update(choice.settings())
        summary[f"{MIN_MEAN_PROBABILITY_KEY}_source"] = source
        if choice.noisy is not None:
            summary[f"{NOISY_MIN_MEAN_PROBABILITY_KEY}_source"] = f"{source}; the {choice.noisy_studies} noisy ones"
        return summary

    _rewrite_summary(model_path, rewrite)


def organ_threshold_curve(cascade, folder: Path, n_studies: int = 20, seed: int = VALIDATION_SEED,
                          mirror_axes: tuple[int, ...] | None = None) -> dict[float, float]:
    """Pooled Dice of the served organ stage at each candidate cut (:data:`radcascade.stages.ORGAN_THRESHOLDS`)
    on generated validation studies (same mix as the held-out set); ``mirror_axes``: the organ stage's
    test-time mirroring (None: the model file's)."""
    from radcascade.cascade import served_dice_counts
    from radcascade.stages import ORGAN_THRESHOLDS

    cases = make_held_out_set(folder, n_studies, seed).cases()
    curve = {}
    stage = cascade.organ_stage
    before = stage.threshold, stage.mirror_axes
    stage.mirror_axes = mirror_axes
    try:
        for t in ORGAN_THRESHOLDS:
            stage.threshold = t
            inter, total = served_dice_counts(cascade, "organ", cases)
            curve[t] = round(2 * inter / total, 5) if total else 1.0
    finally:
        stage.threshold, stage.mirror_axes = before
    return curve


def record_organ_threshold(model_path: Path, curve: dict[float, float], source: str,
                           mirror_axes: tuple[int, ...] | None = None) -> float:
    """Write the best cut of ``curve`` (and the mirroring it was measured with, when given) into an organ
    model file (atomically; the weights are unchanged)."""
    from radcascade.stages import MIRROR_AXES_KEY, ORGAN_THRESHOLD_KEY, pick_organ_threshold

    chosen = pick_organ_threshold(curve)
    mirror = {} if mirror_axes is None else {MIRROR_AXES_KEY: list(mirror_axes)}
    _rewrite_summary(model_path, lambda summary: {
        **summary, ORGAN_THRESHOLD_KEY: chosen, "organ_threshold_curve": {str(k): v for k, v in curve.items()},
        "organ_threshold_source": source, **mirror})
    return chosen


def record_lesion_settings(model_path: Path, settings: dict, source: str) -> None:
    """Write serving settings of the lesion stage chosen on validation (``mirror_axes``, ``threshold``,
    ``margin_mm``: see :class:`radcascade.stages.LesionStage`; ``min_inside_organ``, ``min_lesion_ml``,
    ``min_mean_probability``, ``min_mean_probability_noisy``: see
    :class:`radcascade.cascade.Cascade`) into its model file, atomically."""
    from radcascade.cascade import MIN_INSIDE_ORGAN_KEY, MIN_LESION_ML_KEY
    from radcascade.stages import MARGIN_KEY, MIRROR_AXES_KEY, THRESHOLD_KEY

    keys = {"mirror_axes": MIRROR_AXES_KEY, "threshold": THRESHOLD_KEY, "margin_mm": MARGIN_KEY,
            "min_inside_organ": MIN_INSIDE_ORGAN_KEY, "min_lesion_ml": MIN_LESION_ML_KEY,
            "min_mean_probability": MIN_MEAN_PROBABILITY_KEY,
            "min_mean_probability_noisy": NOISY_MIN_MEAN_PROBABILITY_KEY}
    chosen = {keys[k]: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items() if v is not None}
    def rewrite(summary: dict) -> dict:
        # a value set here has ``source`` as its provenance: an earlier choice's source no longer applies,
        # nor its curve where the value set differs from the one that curve chose
        stale = {f"{k}_source" for k in chosen} | {f"{k}_curve" for k, v in chosen.items() if summary.get(k) != v}
        return {**{k: v for k, v in summary.items() if k not in stale}, **chosen, "lesion_settings_source": source}

    _rewrite_summary(model_path, rewrite)
