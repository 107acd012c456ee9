"""The cascade: organ -> lesions (-> classifier, a later stage) in one pass over one in-memory image."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from radcascade.checkpoints import WarmModel
from radcascade.labels import FIRST_LESION_VALUE, ORGAN_VALUE, LabelContract
from radcascade.stages import LesionStage, OrganResult, OrganStage, default_device, synchronize
from radcascade.volumes import Volume, load_volume

MIN_LESION_ML = 0.02  # components smaller than this (~3.4 mm diameter) are noise


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
    mean_probability: float

    def to_json(self) -> dict:
        d = asdict(self)
        d["volume_ml"] = round(self.volume_ml, 3)
        d["centroid_mm"] = [round(c, 2) for c in self.centroid_mm]
        d["centroid_voxel"] = [round(c, 2) for c in self.centroid_voxel]
        d["mean_probability"] = round(self.mean_probability, 4)
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

    def to_json(self, contract: LabelContract) -> dict:
        out = {
            "label_names": {"background": 0, **contract.names_to_values()},
            "organ": {"name": contract.organ, "found": self.organ_found, "volume_ml": round(self.organ_volume_ml, 2)},
            "lesions": [l.to_json() for l in self.lesions],
            "lesion_count": len(self.lesions),
            "latencies": {k: round(v, 4) for k, v in self.latencies_s.items()},
            "provisional_classes": self.provisional_classes,
        }
        notes = list(self.notes)
        if self.provisional_classes:
            notes.append(
                f"lesion classes are provisional: no classifier stage yet, every lesion is written as "
                f"'{contract.lesion_classes[0]}' (value {FIRST_LESION_VALUE})"
            )
        out["notes"] = notes
        return out


class Cascade:
    """Runs organ -> lesion on one volume; models are warm and follow republished files."""

    def __init__(
        self,
        contract: LabelContract,
        organ_model: str | Path | WarmModel,
        lesion_model: str | Path | WarmModel,
        device: torch.device | None = None,
        amp: bool = True,
        min_lesion_ml: float = MIN_LESION_ML,
    ):
        self.contract = contract
        self.device = device or default_device()
        as_warm = lambda m: m if isinstance(m, WarmModel) else WarmModel(m, self.device)  # noqa: E731
        self.organ_model = as_warm(organ_model)
        self.lesion_model = as_warm(lesion_model)
        self.organ_stage = OrganStage(self.organ_model, amp=amp)
        self.lesion_stage = LesionStage(self.lesion_model, amp=amp)
        self.min_lesion_ml = min_lesion_ml

    def run_file(self, path: str | Path) -> tuple[Volume, CascadeResult]:
        t0 = time.perf_counter()
        volume = load_volume(path)
        load_s = time.perf_counter() - t0
        result = self.run(volume)
        result.latencies_s = {"load": load_s, **result.latencies_s}
        return volume, result

    def run(self, volume: Volume, organ: "OrganResult | None" = None) -> CascadeResult:
        """Run the stages; a given ``organ`` (e.g. from a corrected label) replaces stage 1."""
        t0 = time.perf_counter()
        image = torch.from_numpy(volume.array).to(self.device, non_blocking=True).unsqueeze(0)
        synchronize(self.device)
        latencies = {"to_device": time.perf_counter() - t0}
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0

        if organ is None:
            organ = self.organ_stage(image, volume.spacing)
        latencies["organ"] = organ.latency_s
        label = np.zeros(volume.shape, dtype=np.uint8)
        if not organ.found:
            latencies["lesion"] = 0.0
            latencies["postprocess"] = 0.0
            return CascadeResult(label, False, 0.0, [], latencies, notes=["no organ found: no lesion search"])

        lesion = self.lesion_stage(image, volume.spacing, organ)
        latencies["lesion"] = lesion.latency_s

        t1 = time.perf_counter()
        organ_mask = organ.mask.cpu().numpy()
        lesion_mask = lesion.mask.cpu().numpy()
        lesion_prob = lesion.probability.cpu().numpy()
        label[organ.box.slices][organ_mask] = ORGAN_VALUE
        findings = self._lesions(lesion_mask, lesion_prob, lesion.box, volume, voxel_ml)
        crop = label[lesion.box.slices]
        components, _ = ndimage.label(lesion_mask)
        keep = np.isin(components, [f.id for f in findings]) if findings else np.zeros_like(lesion_mask)
        crop[keep] = FIRST_LESION_VALUE
        # Renumber ids 1..n in output order (ids above were component numbers).
        for i, f in enumerate(findings, start=1):
            f.id = i
        latencies["postprocess"] = time.perf_counter() - t1
        organ_ml = float(organ_mask.sum()) * voxel_ml
        return CascadeResult(label, True, organ_ml, findings, latencies)

    def _lesions(self, mask, prob, box, volume: Volume, voxel_ml: float) -> list[LesionFinding]:
        components, n = ndimage.label(mask)
        if n == 0:
            return []
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(mask, components, idx)
        centroids = ndimage.center_of_mass(mask, components, idx)
        mean_prob = ndimage.mean(prob, components, idx)
        out = []
        for comp, size, c, p in zip(idx, sizes, centroids, mean_prob):
            ml = float(size) * voxel_ml
            if ml < self.min_lesion_ml:
                continue
            centre = tuple(float(ci + lo) for ci, lo in zip(c, box.lo))
            out.append(
                LesionFinding(
                    id=int(comp),
                    value=FIRST_LESION_VALUE,
                    class_name=self.contract.lesion_classes[0],
                    voxels=int(size),
                    volume_ml=ml,
                    centroid_mm=volume.index_to_physical(centre),
                    centroid_voxel=centre,
                    mean_probability=float(p),
                )
            )
        out.sort(key=lambda f: -f.volume_ml)
        return out
