"""The cascade: organ -> lesions -> classifier in one pass over one in-memory image."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from radcascade.checkpoints import WarmModel
from radcascade.classifier import classify_lesions, lesion_regions, load_classifier
from radcascade.labels import FIRST_LESION_VALUE, ORGAN_VALUE, LabelContract
from radcascade.patches import LesionGeometry
from radcascade.preprocessing import NOISY_STUDY_NOISE_HU, BoundingBox, image_noise_hu
from radcascade.stages import (
    SMALL_LESION_MODEL_FILE,
    STAGE_SPECS,
    LesionStage,
    OrganResult,
    OrganStage,
    StageUntrainedError,
    autocast_for,
    default_device,
    synchronize,
)
from radcascade.volumes import Volume, load_volume

# What a model folder holds (the server's model/, the committed pretrained/): the two stages, the optional
# small-lesion detector beside the lesion model (see radcascade.stages.LesionStage) and the classifier.
MODEL_FILES = ("organ.pt", "lesion.pt", SMALL_LESION_MODEL_FILE, "classifier.pt")

MIN_LESION_ML = 0.02  # default: components smaller than this (~3.4 mm diameter) are noise
# A lesion model may carry its own threshold, chosen on validation studies (radcascade.lesion_quality).
MIN_LESION_ML_KEY = "min_lesion_ml"
# A lesion of the organ lies in the organ: a component with less than this share of its voxels inside the
# served organ mask is dropped. The lesion stage's false positives are mostly on the organ's border
# (partial volume against fat or bowel), half outside the organ, while every true lesion found lies
# wholly inside it (docs/benchmarks.md, lesion quality). A lesion model file records its own choice,
# made on validation; a file without one keeps every component (0.0).
MIN_INSIDE_ORGAN_KEY = "min_inside_organ"
# What the trainer publishes with a lesion model: chosen on 40 validation studies (0.5 / 0.75 / 0.9 left
# recall unchanged and gave 0.45 / 0.38 / 0.35 false positives per study, 1.2 without); 0.75 rather than
# 0.9 keeps a lesion bulging out of a slightly under-segmented organ.
LESION_MIN_INSIDE_ORGAN = 0.75
# A lesion's confidence is its mean lesion probability: a component whose mean is under this is dropped.
# The stage's false positives mostly stop just over the probability threshold (a component cut out of
# noise or partial volume averages 0.5-0.8), while a well-found lesion's core is near 1; but a weak
# detection of a true lesion (a sliver of it) also averages 0.7-0.8. Chosen on validation by the trainer
# (and by benchmarks/lesion_quality.py) among these candidates with the rule that never loses a lesion
# >= 10 mm, so it is 0.0 (off) when every cut would; a file without a choice keeps every component.
MIN_MEAN_PROBABILITY_KEY = "min_mean_probability"
# A noisy study (a low-dose protocol: image noise measured in the organ >= NOISY_STUDY_NOISE_HU) has its
# own cut, chosen the same way on the noisy validation studies alone: the false positives of the lesion
# stage gather in such studies (noise blobs cut out at the probability threshold), where a cut that would
# cost a routine study a true lesion loses none. A file without it uses the routine cut for every study.
NOISY_MIN_MEAN_PROBABILITY_KEY = "min_mean_probability_noisy"
MIN_MEAN_PROBABILITY_CANDIDATES = (0.0, 0.7, 0.75, 0.8, 0.85, 0.9)


@dataclass
class LesionFinding:
    """One connected lesion in the cascade's output."""

    id: int
    value: int
    class_name: str
    voxels: int
    volume_ml: float
    centroid_mm: tuple[float, float, float]  # physical LPS coordinates
    centroid_voxel: tuple[float, float, float]  # canonical (LPS-oriented) voxel index
    mean_probability: float  # mean lesion-segmentation probability over the lesion
    extent_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    probabilities: dict[str, float] = field(default_factory=dict)  # classifier, per class name
    uncertainty: dict[str, float] = field(default_factory=dict)
    model_class: str | None = None  # the classifier's choice (None: no trained classifier)
    drawn_class: str | None = None  # the class a radiologist painted (classify on a submitted label)

    def to_json(self) -> dict:
        d = asdict(self)
        d["volume_ml"] = round(self.volume_ml, 3)
        d["centroid_mm"] = [round(c, 2) for c in self.centroid_mm]
        d["centroid_voxel"] = [round(c, 2) for c in self.centroid_voxel]
        d["mean_probability"] = round(self.mean_probability, 4)
        d["extent_mm"] = [round(e, 1) for e in self.extent_mm]
        return d


@dataclass
class CascadeResult:
    """The label map (canonical orientation, contract values) and what the cascade found."""

    label: np.ndarray
    organ_found: bool
    organ_volume_ml: float
    lesions: list[LesionFinding]
    latencies_s: dict[str, float]
    provisional_classes: bool = True
    notes: list[str] = field(default_factory=list)
    image_noise_hu: float | None = None  # measured in the served organ (None: no organ, or too small)

    def to_json(self, contract: LabelContract) -> dict:
        out = {
            "label_names": {"background": 0, **contract.names_to_values()},
            "organ": {"name": contract.organ, "found": self.organ_found, "volume_ml": round(self.organ_volume_ml, 2)},
            "lesions": [l.to_json() for l in self.lesions],
            "lesion_count": len(self.lesions),
            "latencies": {k: round(v, 4) for k, v in self.latencies_s.items()},
            "provisional_classes": self.provisional_classes,
            "image_noise_hu": None if self.image_noise_hu is None else round(self.image_noise_hu, 1),
        }
        notes = list(self.notes)
        if self.provisional_classes:
            notes.append(
                f"lesion classes are provisional: no trained classifier, every lesion is written as "
                f"'{contract.lesion_classes[0]}' (value {FIRST_LESION_VALUE})"
            )
        out["notes"] = notes
        return out


def paint(target: np.ndarray, components: np.ndarray, values: dict[int, int], objects=None) -> None:
    """Write each component's value into ``target``, inside each component's bounding box only
    (``objects``: ``ndimage.find_objects(components)``), not by a pass over the whole array per lesion."""
    if not values:
        return
    objects = ndimage.find_objects(components) if objects is None else objects
    for comp, value in values.items():
        sl = objects[comp - 1]
        np.copyto(target[sl], np.asarray(value, dtype=target.dtype), where=components[sl] == comp)


def new_label(shape) -> np.ndarray:
    """An empty ``[x, y, z]`` label stored z-major like the image's (ITK's) buffer, so writing it back
    is a plain copy, not a transposing one (~0.3 s for a 512x512x200 CT on 2 cores)."""
    return np.zeros(tuple(shape)[::-1], dtype=np.uint8).T


class Cascade:
    """Runs organ -> lesion -> classifier on one volume; models are warm and follow republished files."""

    def __init__(
        self,
        contract: LabelContract,
        organ_model: str | Path | WarmModel,
        lesion_model: str | Path | WarmModel,
        device: torch.device | None = None,
        amp: bool = True,
        min_lesion_ml: float | None = None,
        classifier_model: str | Path | WarmModel | None = None,
        min_inside_organ: float | None = None,
        min_mean_probability: float | None = None,
        min_mean_probability_noisy: float | None = None,
        small_lesion_model: str | Path | WarmModel | None = None,
    ):
        self.contract = contract
        self.device = device or default_device()
        self.amp = amp
        # A path becomes a WarmModel; anything offering ``get()`` (WarmModel, FixedModel) is used as is.
        as_warm = lambda m, **kw: m if hasattr(m, "get") else WarmModel(m, self.device, **kw)  # noqa: E731
        self.organ_model = as_warm(organ_model)
        self.lesion_model = as_warm(lesion_model)
        self.classifier_model = as_warm(classifier_model, loader=load_classifier) if classifier_model else None
        self.organ_stage = OrganStage(self.organ_model, amp=amp)
        # The small-lesion detector (optional; a path whose file is missing or appears later works too).
        self.small_lesion_model = as_warm(small_lesion_model) if small_lesion_model else None
        self.lesion_stage = LesionStage(self.lesion_model, amp=amp, small_lesion_model=self.small_lesion_model)
        self.min_lesion_ml = min_lesion_ml  # None: the lesion model's own choice, else MIN_LESION_ML
        self.min_inside_organ = min_inside_organ  # None: the lesion model's own choice, else 0.0
        self.min_mean_probability = min_mean_probability  # None: the lesion model's own choice, else 0.0
        self.min_mean_probability_noisy = min_mean_probability_noisy  # None: the file's, else the routine cut

    @classmethod
    def in_folder(cls, contract: LabelContract, folder: str | Path, device: torch.device | None = None,
                  **options) -> "Cascade":
        """The cascade of a model folder as the server runs it: ``organ.pt``, ``lesion.pt``, the small-lesion
        detector ``lesion_small.pt`` and ``classifier.pt`` where present."""
        folder = Path(folder)
        classifier = folder / "classifier.pt"
        return cls(contract, folder / "organ.pt", folder / "lesion.pt", device,
                   classifier_model=classifier if classifier.exists() else None,
                   small_lesion_model=folder / SMALL_LESION_MODEL_FILE, **options)

    def models(self) -> dict[str, WarmModel]:
        """The models in use by name (``organ``, ``lesion``, ``lesion_small`` when one is published,
        ``classifier`` when given): what ``/info`` reports and what a stored result is keyed by."""
        models = {"organ": self.organ_model, "lesion": self.lesion_model}
        if self.small_lesion_model is not None and self.small_lesion_model.get() is not None:
            models["lesion_small"] = self.small_lesion_model
        if self.classifier_model is not None:
            models["classifier"] = self.classifier_model
        return models

    def run_file(self, path: str | Path) -> tuple[Volume, CascadeResult]:
        t0 = time.perf_counter()
        volume = load_volume(path)
        load_s = time.perf_counter() - t0
        result = self.run(volume)
        result.latencies_s = {"load": load_s, **result.latencies_s}
        return volume, result

    def run(self, volume: Volume, organ: OrganResult | None = None) -> CascadeResult:
        """Run the stages; a given ``organ`` (e.g. from a corrected label) replaces stage 1."""
        t0 = time.perf_counter()
        image = torch.from_numpy(volume.array).to(self.device, non_blocking=True).unsqueeze(0)
        synchronize(self.device)
        latencies = {"to_device": time.perf_counter() - t0}
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0

        if organ is None:
            organ = self.organ_stage(image, volume.spacing)
        latencies["organ"] = organ.latency_s
        label = new_label(volume.shape)
        if not organ.found:
            latencies.update(lesion=0.0, classifier=0.0, postprocess=0.0)
            return CascadeResult(label, False, 0.0, [], latencies, notes=["no organ found: no lesion search"])

        lesion = self.lesion_stage(image, volume.spacing, organ)
        latencies["lesion"] = lesion.latency_s

        t1 = time.perf_counter()
        organ_mask = organ.mask.cpu().numpy()
        lesion_mask = lesion.mask.cpu().numpy()
        lesion_prob = lesion.probability.cpu().numpy()
        np.copyto(label[organ.box.slices], np.uint8(ORGAN_VALUE), where=organ_mask)
        noise = image_noise_hu(volume.array[organ.box.slices], organ_mask)
        components, kept, objects = self._components(lesion_mask, voxel_ml, self.lesion_min_ml())
        min_inside = self.lesion_min_inside_organ()
        if min_inside > 0:
            kept = [comp for comp in kept
                    if inside_fraction(components, comp, objects[comp - 1], lesion.box, organ.box, organ_mask) >= min_inside]
        findings = [self._finding(i, comp, objects[comp - 1], components, lesion_prob, lesion.box, volume, voxel_ml)
                    for i, comp in enumerate(kept, start=1)]
        min_confidence = self.lesion_min_mean_probability(noise)
        notes = []
        if min_confidence != self.lesion_min_mean_probability():
            notes.append(f"image noise {noise:.0f} HU (a low-dose study): lesions kept need a mean probability "
                         f">= {min_confidence} (the noisy-study cut)")
        if min_confidence > 0:
            confident = [(f, comp) for f, comp in zip(findings, kept) if f.mean_probability >= min_confidence]
            findings, kept = [f for f, _ in confident], [comp for _, comp in confident]
            for i, f in enumerate(findings, start=1):
                f.id = i
        latencies["postprocess"] = time.perf_counter() - t1
        if findings:
            regions = lesion_regions(components, kept, volume.spacing, offset=lesion.box.lo, objects=objects)
            provisional = not self._classify(image[0], volume, findings, latencies, regions)
        else:  # nothing to classify: classes are provisional only where no trained classifier is loaded
            provisional = self.classifier_model is None or self.classifier_model.get() is None
        paint(label[lesion.box.slices], components, {comp: f.value for f, comp in zip(findings, kept)}, objects)
        organ_ml = float(organ_mask.sum()) * voxel_ml
        return CascadeResult(label, True, organ_ml, findings, latencies, provisional_classes=provisional, notes=notes,
                             image_noise_hu=noise)

    def relabel(self, volume: Volume, label: np.ndarray, keep_drawn_classes: bool = False) -> CascadeResult:
        """Classify the lesions of a (corrected) contract-valued label; outlines stay as drawn.

        With ``keep_drawn_classes`` each lesion keeps the class it was painted with and the classifier's
        opinion is reported beside it (``model_class``, a note per disagreement); otherwise the
        classifier's class is painted and every class it changed is named in the notes.
        """
        t0 = time.perf_counter()
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        out = np.where(label >= 1, ORGAN_VALUE, 0).astype(np.uint8)
        components, kept, objects = self._components(label >= FIRST_LESION_VALUE, voxel_ml, 0.0)  # every drawn lesion
        whole = BoundingBox((0, 0, 0), volume.shape)
        ones = np.broadcast_to(np.float32(1), volume.shape)
        findings = [self._finding(i, comp, objects[comp - 1], components, ones, whole, volume, voxel_ml)
                    for i, comp in enumerate(kept, start=1)]
        drawn = [self._drawn_value(label[objects[comp - 1]], components[objects[comp - 1]] == comp) for comp in kept]
        for f, value in zip(findings, drawn):
            f.drawn_class = self.contract.name_of(value)
        latencies = {"postprocess": time.perf_counter() - t0}
        image = torch.from_numpy(volume.array).to(self.device)
        regions = lesion_regions(components, kept, volume.spacing)
        classified = self._classify(image, volume, findings, latencies, regions) if findings else True
        notes: list[str] = []
        if not classified and not keep_drawn_classes:
            raise StageUntrainedError(f"classifier stage is untrained: {self.classifier_model.problem if self.classifier_model else 'not configured'}")
        if not classified:
            notes.append("no trained classifier: classes kept as drawn, no model opinion")
        for f, value, comp in zip(findings, drawn, kept):
            if keep_drawn_classes:
                f.value, f.class_name = value, self.contract.name_of(value)
                if f.model_class is not None and f.model_class != f.drawn_class:
                    notes.append(f"lesion {f.id}: kept as drawn ('{f.drawn_class}'); the classifier says "
                                 f"'{f.model_class}' (p={f.probabilities.get(f.model_class, 0):.2f})")
            else:
                sl = objects[comp - 1]
                changed = int(np.count_nonzero((components[sl] == comp) & (label[sl] != f.value)))
                if changed:
                    notes.append(f"lesion {f.id}: {changed} voxels changed to '{f.class_name}' by the classifier "
                                 f"(drawn as '{f.drawn_class}')")
        if keep_drawn_classes:  # exactly as drawn, even where one blob holds voxels of two classes
            np.copyto(out, label.astype(out.dtype, copy=False), where=label >= FIRST_LESION_VALUE)
        else:
            paint(out, components, {comp: f.value for f, comp in zip(findings, kept)}, objects)
        return CascadeResult(out, bool((label >= 1).any()), float((label >= 1).sum()) * voxel_ml, findings, latencies,
                             provisional_classes=False, notes=notes)

    @staticmethod
    def _drawn_value(label_box: np.ndarray, region: np.ndarray) -> int:
        """The lesion class value painted on most of a lesion's voxels."""
        values = label_box[region].astype(np.int64)
        return int(np.bincount(values[values >= FIRST_LESION_VALUE]).argmax())

    def saliency(self, volume: Volume, findings: list[LesionFinding]):
        """Grad-CAM of each lesion's predicted class (uint8 volume, canonical) and the peaks."""
        from radcascade.saliency import saliency_volume

        loaded = self.classifier_model.get() if self.classifier_model else None
        if loaded is None:
            raise StageUntrainedError("saliency needs a trained classifier")
        ckpt = loaded.checkpoint
        geoms = [LesionGeometry(f.centroid_voxel, f.extent_mm) for f in findings]
        classes = [ckpt.classes.index(f.class_name) for f in findings]
        image = torch.from_numpy(volume.array).to(self.device)
        return saliency_volume(loaded.network, image, volume.spacing, geoms, classes, ckpt.patch, volume.index_to_physical)

    def _lesion_setting(self, own: float | None, key: str, default: float) -> float:
        """A post-processing setting: the constructor's value, else the lesion model file's, else ``default``."""
        if own is not None:
            return own
        loaded = self.lesion_model.get()
        chosen = loaded.checkpoint.summary.get(key) if loaded is not None else None
        return float(chosen) if chosen is not None else default

    def lesion_min_ml(self) -> float:
        """Smallest lesion kept."""
        return self._lesion_setting(self.min_lesion_ml, MIN_LESION_ML_KEY, MIN_LESION_ML)

    def lesion_min_inside_organ(self) -> float:
        """Share of a lesion that must lie inside the organ (0: no filter)."""
        return self._lesion_setting(self.min_inside_organ, MIN_INSIDE_ORGAN_KEY, 0.0)

    def lesion_min_mean_probability(self, noise_hu: float | None = None) -> float:
        """Least mean lesion probability of a lesion kept (0: no filter) in a study whose image noise is
        ``noise_hu``: the noisy-study cut from :data:`NOISY_STUDY_NOISE_HU` on, where there is one."""
        routine = self._lesion_setting(self.min_mean_probability, MIN_MEAN_PROBABILITY_KEY, 0.0)
        if noise_hu is None or noise_hu < NOISY_STUDY_NOISE_HU:
            return routine
        return self._lesion_setting(self.min_mean_probability_noisy, NOISY_MIN_MEAN_PROBABILITY_KEY, routine)

    @staticmethod
    def _components(mask: np.ndarray, voxel_ml: float, min_ml: float) -> tuple[np.ndarray, list[int], list]:
        """Connected lesions (labelled array, ids largest first, dropping those under ``min_ml``, and
        every component's bounding box): one labelling pass and one box pass; sizes are counted in
        each box, so the work after labelling grows with the lesions' extent, not the crop's."""
        components, n = ndimage.label(mask)
        if n == 0:
            return components, [], []
        objects = ndimage.find_objects(components)
        sizes = np.array([np.count_nonzero(components[sl] == i) for i, sl in enumerate(objects, start=1)], np.float64)
        order = np.argsort(-sizes)
        kept = [int(k + 1) for k in order if sizes[k] * voxel_ml >= min_ml]
        return components, kept, objects

    def _finding(self, new_id: int, comp: int, sl, components, prob, box, volume: Volume, voxel_ml: float) -> LesionFinding:
        region = components[sl] == comp
        size = int(region.sum())
        centre_local = ndimage.center_of_mass(region)
        centre = tuple(float(c + s.start + lo) for c, s, lo in zip(centre_local, sl, box.lo))
        extent = tuple(float((s.stop - s.start) * sp) for s, sp in zip(sl, volume.spacing))
        return LesionFinding(
            id=new_id,
            value=FIRST_LESION_VALUE,
            class_name=self.contract.lesion_classes[0],
            voxels=size,
            volume_ml=size * voxel_ml,
            centroid_mm=volume.index_to_physical(centre),
            centroid_voxel=centre,
            mean_probability=float(prob[sl][region].mean()),
            extent_mm=extent,
        )

    def _classify(self, image: torch.Tensor, volume: Volume, findings: list[LesionFinding], latencies: dict,
                  regions) -> bool:
        """Paint classes into ``findings``; False when there is no usable classifier (provisional).
        ``regions`` are the lesions' masks: radiomics models read them, CNN models their patches."""
        loaded = self.classifier_model.get() if self.classifier_model else None
        if loaded is None:
            return False
        t0 = time.perf_counter()
        ckpt = loaded.checkpoint
        with autocast_for(self.device, self.amp):
            predictions = classify_lesions(loaded.network, ckpt, image, volume.spacing, regions)
        for f, p in zip(findings, predictions):
            name = ckpt.classes[p.class_index]
            f.class_name = f.model_class = name
            f.value = self.contract.value_of(name)
            f.probabilities = {n: round(float(q), 4) for n, q in zip(ckpt.classes, p.probabilities)}
            f.uncertainty = {"entropy": round(p.entropy, 4), "view_disagreement": round(p.view_disagreement, 4)}
        synchronize(self.device)
        latencies["classifier"] = time.perf_counter() - t0
        return True


def inside_fraction(components: np.ndarray, comp: int, sl, crop: BoundingBox, organ_box: BoundingBox,
                    organ_mask: np.ndarray) -> float:
    """Share of component ``comp`` (``sl``: its box in the lesion crop ``crop``) inside the organ mask
    (``organ_mask``: host copy over ``organ_box``); only the overlap of the two boxes is read."""
    region = components[sl] == comp
    lo = [s.start + c for s, c in zip(sl, crop.lo)]  # the component's box in volume coordinates
    hi = [s.stop + c for s, c in zip(sl, crop.lo)]
    a = [max(l, o) for l, o in zip(lo, organ_box.lo)]
    b = [min(h, o) for h, o in zip(hi, organ_box.hi)]
    if any(y <= x for x, y in zip(a, b)):
        return 0.0
    in_region = tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo))
    in_organ = tuple(slice(x - o, y - o) for x, y, o in zip(a, b, organ_box.lo))
    inside = np.count_nonzero(region[in_region] & organ_mask[in_organ])
    return inside / max(1, int(np.count_nonzero(region)))


def organ_from_label(organ_mask: np.ndarray, device: torch.device) -> OrganResult | None:
    """A known organ (e.g. a corrected, submitted one) in the form stage 1 hands to stage 2."""
    box = BoundingBox.of_mask(organ_mask)
    if box is None:
        return None
    return OrganResult(box, torch.from_numpy(np.ascontiguousarray(organ_mask[box.slices])).to(device), 0.0)


def _served_organ(cascade: Cascade, volume: Volume, label: np.ndarray) -> np.ndarray:
    image = torch.from_numpy(volume.array).to(cascade.device).unsqueeze(0)
    organ = cascade.organ_stage(image, volume.spacing)
    mask = np.zeros(volume.shape, bool)
    if organ.found:
        mask[organ.box.slices] = organ.mask.cpu().numpy()
    return mask


def _served_lesions(cascade: Cascade, volume: Volume, label: np.ndarray) -> np.ndarray:
    organ = organ_from_label(cascade.contract.organ_mask(label), cascade.device)
    if organ is None:
        return np.zeros(volume.shape, bool)
    return cascade.run(volume, organ=organ).label >= FIRST_LESION_VALUE


_SERVED = {"organ": _served_organ, "lesion": _served_lesions}


def served_dice_counts(cascade: Cascade, stage: str, cases) -> tuple[int, int]:
    """(Intersection, sum of both sizes) of the served stage's masks against the truth over ``cases``
    of ``(volume, contract label)``: the pooled Dice is ``2 * inter / total``."""
    inter = total = 0
    for volume, label in cases:
        pred, truth = served_stage_mask(cascade, stage, volume, label), STAGE_SPECS[stage].target(cascade.contract, label)
        inter += int(np.logical_and(pred, truth).sum())
        total += int(pred.sum() + truth.sum())
    return inter, total


def served_stage_mask(cascade: Cascade, stage: str, volume: Volume, label: np.ndarray) -> np.ndarray:
    """What the server answers for one stage, at full resolution after post-processing: the organ
    stage alone, or the lesion stage inside the organ of ``label`` (as ``/infer/lesion`` does with a
    submitted organ).  Training validates with this, so its Dice is the served Dice."""
    return _SERVED[stage](cascade, volume, label)
