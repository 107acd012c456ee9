"""Deterministic synthetic CT-like abdominal studies in a MONAI Label datastore layout.

Each study is a CT-like volume in Hounsfield units (air, skin/fat, muscle, soft tissue, spine,
ribs, kidneys, spleen, a liver-like organ of varied shape/size/position) with 0-5 lesions inside
the organ, drawn from two classes that differ in *appearance*, not in one intensity:

* **benign** (cyst-like): smooth ellipsoid, homogeneous, near-water density (-5..40 HU),
  sharp margin;
* **malignant** (metastasis-like): lobulated outline, heterogeneous core (0..45 HU),
  an enhancing rim (+30..+80 HU over the core), blurred margin.

The core densities overlap, so no single threshold separates the classes.  Then the whole
volume gets partial-volume blur and quantum noise.

That default family is easy for intensity statistics alone (the rim lifts the upper percentiles of
malignant lesions). The second family, ``family="matched"``, is harder: the classes differ only in
**margin, shape and internal texture**, and the voxel values inside every lesion are finally
rank-mapped onto the same kind of target histogram for both classes (a normal distribution whose
level and spread are drawn from one range), so first-order statistics (mean, percentiles, std,
max) carry no class information:

* **benign**: near-ellipsoid outline (mild deformation), sharp margin, coarse smooth texture;
* **malignant**: lobulated outline, infiltrative margin blurred into the organ around it, fine
  mottled texture brighter towards the periphery.

Usage::

    python -m radcascade.sample_data --out sample-data/abdomen --labelled 8 --unlabelled 4
    python -m radcascade.sample_data --out /tmp/ct --labelled 2 --shape 512 512 200 --spacing 0.8 0.8 2.5
    python -m radcascade.sample_data --out /tmp/hard --labelled 20 --family matched
    python -m radcascade.sample_data --out /tmp/big --labelled 1 --unlabelled 0 --shape 512 512 200 \
        --spacing 0.5 0.5 1.28 --organ-scale 1.3 --lesions 20 24
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from radcascade.files import write_text_atomic
from radcascade.labels import ORGAN_VALUE, LabelContract

DEFAULT_SHAPE = (128, 128, 48)  # voxels, (x, y, z)
DEFAULT_SPACING = (2.5, 2.5, 4.0)  # mm
BENIGN, MALIGNANT = 0, 1  # lesion class index into LabelContract.lesion_classes
# Quantum noise (std, HU) of the scanner: a routine portal-venous protocol, and a low-dose one
# (roughly a quarter of the dose: noise grows as 1/sqrt(dose)) that a site may add later.
STANDARD_NOISE_HU = (6.0, 14.0)
LOW_DOSE_NOISE_HU = (28.0, 40.0)
# Lesion diameters (mm) are drawn log-uniform in this range: about a third of them 10-20 mm.
LESION_DIAMETER_MM = (6.0, 40.0)
# Probability that a lesion is malignant; at this value the class is drawn as the committed sets drew it.
MALIGNANT_FRACTION = 0.5
# Lesion families: "default" (the committed sample set) and "matched" (first-order statistics
# matched between classes; see the module docstring).
FAMILIES = ("default", "matched")


@dataclass(frozen=True)
class LesionSpec:
    """One generated lesion: class index, centre in mm (x, y, z), diameter in mm."""

    lesion_class: int
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    core_hu: float


@dataclass
class Study:
    """A generated study: CT volume (HU, int16), label map (uint8), geometry and truth."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    lesions: list[LesionSpec] = field(default_factory=list)


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]):
    """Coordinates in mm, centred on the volume, as broadcastable (x, y, z) arrays."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox, amplitude: float) -> np.ndarray:
    """Low-frequency texture: blurred white noise rescaled to unit std times ``amplitude``."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    std = float(n.std()) or 1.0
    return n * (amplitude / std)


def _radial_harmonics(rng: np.random.Generator, n_terms: int, amplitude: float):
    """A random smooth function of direction (for lobulated / deformed outlines)."""
    terms = []
    for _ in range(n_terms):
        axis = rng.standard_normal(3)
        axis /= np.linalg.norm(axis)
        terms.append((axis, rng.integers(2, 6), rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0)))
    norm = sum(t[3] for t in terms) or 1.0

    def modulation(dx, dy, dz, r):
        r = np.maximum(r, 1e-3)
        out = 0.0
        for axis, freq, phase, weight in terms:
            cos_t = (dx * axis[0] + dy * axis[1] + dz * axis[2]) / r
            out = out + weight * np.cos(freq * np.arccos(np.clip(cos_t, -1, 1)) + phase)
        return 1.0 + amplitude * out / norm

    return modulation


def check_lesion_draw(lesion_diameter_mm: tuple[float, float], malignant_fraction: float) -> None:
    """Raise ValueError, with what is wrong, for a diameter range or malignant fraction that cannot be drawn."""
    d_lo, d_hi = (float(d) for d in lesion_diameter_mm)
    if not 0 < d_lo <= d_hi:
        raise ValueError(f"lesion diameter range must be 0 < MIN <= MAX mm, got {tuple(lesion_diameter_mm)}")
    if not 0.0 <= malignant_fraction <= 1.0:
        raise ValueError(f"malignant fraction must be within 0..1, got {malignant_fraction}")


def generate_study(
    seed: int,
    name: str,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    max_lesions: int = 5,
    noise_hu: tuple[float, float] = STANDARD_NOISE_HU,
    family: str = "default",
    organ_scale: float = 1.0,
    min_lesions: int = 0,
    lesion_diameter_mm: tuple[float, float] = LESION_DIAMETER_MM,
    malignant_fraction: float = MALIGNANT_FRACTION,
) -> Study:
    """Generate one study deterministically from ``seed`` (``noise_hu``: range of the noise std; the
    anatomy and lesions do not depend on it; ``family``: one of :data:`FAMILIES`; ``organ_scale``
    multiplies the organ's semi-axes (about ``organ_scale**3`` times the volume, within the body);
    between ``min_lesions`` and ``max_lesions`` lesions are drawn, their diameters log-uniform in
    ``lesion_diameter_mm``; a narrower range draws the same random numbers, so the anatomy is unchanged;
    each lesion is malignant with probability ``malignant_fraction``, and the anatomy, drawn first, does not
    depend on it either)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown lesion family '{family}' (one of {FAMILIES})")
    check_lesion_draw(lesion_diameter_mm, malignant_fraction)
    d_lo, d_hi = (float(d) for d in lesion_diameter_mm)
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    x, y, z = _grid(shape, spacing)
    half_z = (shape[2] - 1) / 2.0 * spacing[2]
    zf = z / max(half_z, 1.0)  # -1..1 cranio-caudal (z grows towards the head)

    # Body outline: an ellipse that tapers slightly along z. LPS: +x = patient left, +y = posterior.
    body_a = rng.uniform(135, 165) * (1 - 0.05 * zf**2)
    body_b = rng.uniform(100, 120) * (1 - 0.05 * zf**2)
    y_shift = rng.uniform(-8, 8)
    body_r = np.sqrt((x / body_a) ** 2 + ((y - y_shift) / body_b) ** 2)
    fat_mm = rng.uniform(8, 25)
    inner_r = 1 - fat_mm / body_b
    muscle_r = inner_r - 6 / body_b

    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = body_r <= 1.0
    hu[body] = -100.0  # subcutaneous fat
    muscle_ring = (body_r <= inner_r) & (body_r > muscle_r)
    hu[muscle_ring] = 55.0
    interior = body_r <= muscle_r
    # Bowel/mesentery: soft tissue with fat pockets and some gas.
    mesentery = 35.0 + _smooth_noise(rng, shape, 2.0, 60.0)
    mesentery = np.where(mesentery < -10, -90.0, mesentery)
    gas = _smooth_noise(rng, shape, 1.5, 1.0) > 2.3
    hu = np.where(interior, mesentery, hu)
    hu[interior & gas] = -700.0

    # Spine (vertebral body + canal) posterior, ribs at the periphery.
    spine_y = body_b * 0.55 + y_shift
    vert = np.sqrt(x**2 + (y - spine_y) ** 2)
    vert = np.broadcast_to(vert, shape)
    hu[vert <= 22] = 250.0
    hu[(vert <= 22) & (vert > 18)] = 700.0
    canal = np.broadcast_to(np.sqrt(x**2 + (y - spine_y - 30) ** 2) <= 9, shape)
    hu[canal] = 20.0
    rib_phase = rng.uniform(0, 2 * np.pi)
    ring = (body_r <= muscle_r + 0.02) & (body_r > muscle_r - 0.06)
    angle = np.arctan2(y - y_shift, x)
    rib_mask = ring & (np.cos(z * 2 * np.pi / 28.0 + rib_phase) > 0.55) & (zf > -0.3)
    rib_mask &= (np.cos(angle * 7 + rib_phase) > 0.1) & (angle < 0.35 * np.pi)  # arcs, not the back
    hu[rib_mask] = 600.0

    # Kidneys and spleen (distractors near the organ).
    for side in (-1, 1):
        kc = (side * rng.uniform(55, 70), spine_y - rng.uniform(5, 20), rng.uniform(-0.5, -0.1) * half_z)
        kr = np.sqrt(((x - kc[0]) / 28) ** 2 + ((y - kc[1]) / 22) ** 2 + ((z - kc[2]) / 50) ** 2)
        hu[kr <= 1.0] = 150.0
        hu[kr <= 0.65] = 35.0
    sc = (rng.uniform(70, 95), rng.uniform(10, 40), rng.uniform(0.1, 0.5) * half_z)
    sr = np.sqrt(((x - sc[0]) / 30) ** 2 + ((y - sc[1]) / 45) ** 2 + ((z - sc[2]) / 45) ** 2)
    hu[sr <= 1.0] = rng.uniform(40, 50)

    # The organ: a deformed ellipsoid on the patient's right (negative x), upper abdomen.
    oc = np.array([rng.uniform(-75, -45), rng.uniform(-20, 15), rng.uniform(0.0, 0.35) * half_z])
    semi = np.array([rng.uniform(60, 85), rng.uniform(50, 70), rng.uniform(45, 70)]) * organ_scale
    semi[2] = min(semi[2], half_z * 0.9)
    dx, dy, dz = x - oc[0], y - oc[1], z - oc[2]
    r_ell = np.sqrt((dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2)
    deform = _radial_harmonics(rng, 4, rng.uniform(0.08, 0.2))
    organ = r_ell <= deform(dx, dy, dz, np.sqrt(dx**2 + dy**2 + dz**2))
    organ &= body_r <= muscle_r  # stays inside the abdominal wall
    organ_hu = rng.uniform(50, 75)
    hu = np.where(organ, organ_hu + _smooth_noise(rng, shape, 1.2, 6.0), hu)
    # Hepatic vessels: thin bright tubes.
    vessels = organ & (np.abs(_smooth_noise(rng, shape, 2.5, 1.0)) < 0.08)
    hu[vessels] = organ_hu + rng.uniform(40, 80)

    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = ORGAN_VALUE

    # Lesions inside the organ.
    lesions: list[LesionSpec] = []
    matched: list[tuple[np.ndarray, float, float]] = []  # family "matched": (mask, level, spread) per lesion
    n_lesions = int(rng.integers(min(min_lesions, max_lesions), max_lesions + 1))
    inside = ndimage.distance_transform_edt(organ, sampling=spacing)
    for _ in range(n_lesions):
        if malignant_fraction == MALIGNANT_FRACTION:  # the committed sets' draw
            cls = int(rng.integers(0, 2))
        else:
            cls = MALIGNANT if rng.random() < malignant_fraction else BENIGN
        diameter = float(np.exp(rng.uniform(np.log(d_lo), np.log(d_hi))))
        radius = diameter / 2
        candidates = np.argwhere(inside > radius + 2.0)
        if len(candidates) == 0:
            continue
        ci = candidates[rng.integers(len(candidates))]
        centre = [(ci[a] - (shape[a] - 1) / 2.0) * spacing[a] for a in range(3)]
        lx, ly, lz = x - centre[0], y - centre[1], z - centre[2]
        lr = np.sqrt(lx**2 + ly**2 + lz**2)
        if family == "matched":
            mask, hu, level, spread = _matched_lesion(rng, cls, radius, lx, ly, lz, lr, shape, hu)
            mask &= organ
            if not mask.any():
                continue
            label[mask] = 2 + cls
            matched.append((mask, level, spread))
            lesions.append(LesionSpec(cls, tuple(float(c) for c in centre), diameter, level))
            continue
        if cls == BENIGN:
            stretch = rng.uniform(0.85, 1.15, size=3)
            er = np.sqrt((lx / stretch[0]) ** 2 + (ly / stretch[1]) ** 2 + (lz / stretch[2]) ** 2)
            mask = er <= radius
            core = rng.uniform(-5, 40)
            values = core + _smooth_noise(rng, shape, 1.0, 2.0)
            hu = np.where(mask, values, hu)
        else:
            lobes = _radial_harmonics(rng, 5, rng.uniform(0.25, 0.45))
            rel = lr / (radius * lobes(lx, ly, lz, lr))
            mask = rel <= 1.0
            core = rng.uniform(0, 45)
            rim_boost = rng.uniform(30, 80)
            rim_width = np.clip(rng.uniform(1.5, 4.0) / radius, 0.12, 0.5)
            values = core + _smooth_noise(rng, shape, 0.8, rng.uniform(12, 25))
            values = values + rim_boost * np.clip((rel - (1 - rim_width)) / rim_width, 0, 1)
            soft = np.clip((1.15 - rel) / 0.3, 0, 1)  # blurred margin into the organ
            hu = np.where(rel <= 1.15, soft * values + (1 - soft) * hu, hu)
        mask &= organ
        if not mask.any():
            continue
        label[mask] = 2 + cls
        lesions.append(LesionSpec(cls, tuple(float(c) for c in centre), diameter, float(core)))

    # Scanner: partial-volume blur then noise; air is clipped at -1024 like a real scanner.
    sigma = [rng.uniform(0.4, 0.8) * 2.0 / s for s in spacing]
    hu = ndimage.gaussian_filter(hu, sigma)
    hu += rng.normal(0.0, rng.uniform(*noise_hu), size=shape).astype(np.float32)
    hu = np.clip(hu, -1024, 3071)
    hu[~np.broadcast_to(body, shape) & (hu < -900)] = -1000.0
    for mask, level, spread in matched:
        mask = mask & (label >= 2)  # a later lesion may have painted over part of it
        if mask.any():
            hu[mask] = _rank_match(hu[mask], level, spread)
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(shape, spacing))
    return Study(name, np.round(hu).astype(np.int16), label, spacing, origin, lesions)


def _matched_lesion(rng: np.random.Generator, cls: int, radius: float, lx, ly, lz, lr, shape, hu: np.ndarray):
    """Family "matched": draw one lesion's outline, margin and texture (values are rank-mapped later).

    Returns its mask, the volume with the lesion painted in, and its target histogram (level, spread),
    drawn from the same ranges whatever the class."""
    level = rng.uniform(0, 40)
    spread = rng.uniform(8, 20)
    contrast = 2.5 * spread  # texture well above the scanner noise, so the voxels' order follows it
    if cls == BENIGN:
        stretch = rng.uniform(0.85, 1.15, size=3)
        er = np.sqrt((lx / stretch[0]) ** 2 + (ly / stretch[1]) ** 2 + (lz / stretch[2]) ** 2)
        deform = _radial_harmonics(rng, 3, rng.uniform(0.0, 0.1))
        rel = er / (radius * deform(lx, ly, lz, lr))
        texture = _smooth_noise(rng, shape, 2.5, 1.0)  # coarse, smooth
        mask = rel <= 1.0
        return mask, np.where(mask, level + contrast * texture, hu), level, spread
    lobes = _radial_harmonics(rng, 5, rng.uniform(0.25, 0.5))
    rel = lr / (radius * lobes(lx, ly, lz, lr))
    texture = _smooth_noise(rng, shape, 0.5, 1.0) + 1.5 * np.clip(rel, 0, 1) ** 2  # fine mottling, brighter rim
    values = level + contrast * texture
    margin = rng.uniform(0.3, 0.6)  # infiltrative: blurred over this fraction of the radius
    soft = np.clip((1.0 + margin - rel) / margin, 0, 1)
    painted = np.where(rel <= 1.0, values, np.where(rel <= 1.0 + margin, soft * values + (1 - soft) * hu, hu))
    return rel <= 1.0, painted, level, spread


def _rank_match(values: np.ndarray, level: float, spread: float) -> np.ndarray:
    """Keep the voxels' order (the texture), replace their values by the quantiles of N(level, spread)."""
    from scipy.special import ndtri

    n = len(values)
    order = np.argsort(values, kind="stable")
    out = np.empty(n, np.float32)
    out[order] = level + spread * ndtri((np.arange(n) + 0.5) / n)
    return out


def _to_sitk(array: np.ndarray, spacing, origin) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    return img


def write_study(study: Study, studies_dir: Path, with_label: bool, contract: LabelContract) -> None:
    """Write the image (and label) in MONAI Label's local datastore layout, atomically."""
    from radcascade.volumes import atomic_write_image

    atomic_write_image(_to_sitk(study.image, study.spacing, study.origin), studies_dir / f"{study.name}.nii.gz")
    if with_label:
        atomic_write_image(
            _to_sitk(study.label, study.spacing, study.origin),
            studies_dir / "labels" / "final" / f"{study.name}.nii.gz",
        )


def protocol_mix(n_studies: int, low_dose_every: int = 0, lesion_free_every: int = 0) -> tuple[frozenset[int], frozenset[int]]:
    """Indices of the low-dose and of the lesion-free studies of a generated set: every
    ``low_dose_every``-th study from the first, every ``lesion_free_every``-th from the second (0: none).
    The held-out evaluation uses (4, 8); training on the same mix shows the networks what they are judged on."""
    low_dose = frozenset(range(0, n_studies, low_dose_every)) if low_dose_every else frozenset()
    lesion_free = frozenset(range(1, n_studies, lesion_free_every)) if lesion_free_every else frozenset()
    return low_dose, lesion_free


def generate_datastore(
    out: Path,
    labelled: int,
    unlabelled: int,
    seed: int = 0,
    shape=DEFAULT_SHAPE,
    spacing=DEFAULT_SPACING,
    prefix: str = "study",
    contract: LabelContract | None = None,
    lesion_free: frozenset[int] = frozenset(),
    low_dose: frozenset[int] = frozenset(),
    family: str = "default",
    organ_scale: float = 1.0,
    lesions: tuple[int, int] = (0, 5),
    lesion_diameter_mm: tuple[float, float] = LESION_DIAMETER_MM,
    malignant_fraction: float = MALIGNANT_FRACTION,
) -> list[Study]:
    """Generate ``labelled + unlabelled`` studies into ``out`` and a ``truth.json`` manifest.

    Studies whose index is in ``lesion_free`` get the same anatomy as they would otherwise, without
    lesions (a screening worklist is mostly normal studies); those in ``low_dose`` the same anatomy
    and lesions with low-dose noise (:data:`LOW_DOSE_NOISE_HU`).  ``organ_scale`` and ``lesions`` (the
    (min, max) lesion count of a study) make e.g. a large organ with many lesions;
    ``lesion_diameter_mm`` narrows the lesion sizes and ``malignant_fraction`` shifts the classes, e.g.
    towards the small malignant lesions a network misses (see :func:`generate_study`)."""
    check_lesion_draw(lesion_diameter_mm, malignant_fraction)  # before anything is written
    contract = contract or LabelContract()
    out = Path(out)
    (out / "labels" / "final").mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(seed).generate_state(labelled + unlabelled)
    studies, manifest = [], {}
    for i, s in enumerate(seeds):
        study = generate_study(int(s), f"{prefix}_{i:03d}", shape, spacing, max_lesions=0 if i in lesion_free else lesions[1],
                               noise_hu=LOW_DOSE_NOISE_HU if i in low_dose else STANDARD_NOISE_HU, family=family,
                               organ_scale=organ_scale, min_lesions=lesions[0], lesion_diameter_mm=lesion_diameter_mm,
                               malignant_fraction=malignant_fraction)
        write_study(study, out, with_label=i < labelled, contract=contract)
        manifest[study.name] = {
            "labelled": i < labelled,
            "protocol": "low-dose" if i in low_dose else "standard",
            "lesions": [
                {"class": contract.lesion_classes[l.lesion_class], "diameter_mm": round(l.diameter_mm, 1),
                 "centre_mm": [round(c, 1) for c in l.centre_mm]}
                for l in study.lesions
            ],
        }
        studies.append(study)
    head = {"seed": seed, "shape": list(shape), "spacing": list(spacing)}
    if family != "default":  # the default family's manifest stays byte-identical
        head["family"] = family
    if organ_scale != 1.0 or tuple(lesions) != (0, 5):
        head.update(organ_scale=organ_scale, lesions=list(lesions))
    if tuple(lesion_diameter_mm) != LESION_DIAMETER_MM:
        head["lesion_diameter_mm"] = [float(d) for d in lesion_diameter_mm]
    if malignant_fraction != MALIGNANT_FRACTION:
        head["malignant_fraction"] = float(malignant_fraction)
    write_text_atomic(out / "truth.json", json.dumps({**head, "studies": manifest}, indent=1))
    return studies


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="studies folder to write")
    p.add_argument("--labelled", type=int, default=8)
    p.add_argument("--unlabelled", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=DEFAULT_SHAPE)
    p.add_argument("--spacing", type=float, nargs=3, default=DEFAULT_SPACING)
    p.add_argument("--prefix", default="study")
    p.add_argument("--family", default="default", choices=FAMILIES)
    p.add_argument("--organ-scale", type=float, default=1.0, help="organ semi-axes x this (1.26: about twice the volume)")
    p.add_argument("--lesions", type=int, nargs=2, default=(0, 5), metavar=("MIN", "MAX"), help="lesions per study")
    p.add_argument("--lesion-diameter", type=float, nargs=2, default=LESION_DIAMETER_MM, metavar=("MIN", "MAX"),
                   help="lesion diameters in mm, drawn log-uniform in this range")
    p.add_argument("--malignant-fraction", type=float, default=MALIGNANT_FRACTION,
                   help="probability that a lesion is malignant")
    a = p.parse_args(argv)
    try:
        check_lesion_draw(tuple(a.lesion_diameter), a.malignant_fraction)
    except ValueError as e:
        p.error(str(e))
    studies = generate_datastore(a.out, a.labelled, a.unlabelled, a.seed, tuple(a.shape), tuple(a.spacing), a.prefix,
                                 family=a.family, organ_scale=a.organ_scale, lesions=tuple(a.lesions),
                                 lesion_diameter_mm=tuple(a.lesion_diameter), malignant_fraction=a.malignant_fraction)
    n_les = sum(len(s.lesions) for s in studies)
    print(f"wrote {len(studies)} studies ({a.labelled} labelled) with {n_les} lesions to {a.out}")


if __name__ == "__main__":
    main()
