"""Does uncertainty-driven "Next sample" beat random? A simulated Slicer annotation loop, no server.

(The logic of ``benchmarks/active_learning.py``; its command lines and results are described there.)

Per seed: generated studies (a pool + a few labelled to start with) and a fixed held-out test set
(other generator seeds, never trained on). Round 0 trains the organ and lesion UNets from scratch
and the classifier (deep features) on the starting studies. Then, for every strategy, each round
picks ``--per-round`` studies from the pool, "annotates" them with the generator's ground truth,
retrains every stage for a fixed number of **epochs** (warm-started from the strategy's previous
round, as the app does; epochs rather than minutes because the machine is shared; no validation
hold-out, see :func:`train_round`) and evaluates the cascade on the test set.

Pools: by default every study draws 0-5 lesions; ``--lesion-free-pool F`` makes a screening
worklist (a share F of the pool without lesions); ``--low-dose-pool F`` puts studies of a low-dose
protocol the starting studies never show into the pool (and, ``--low-dose-test``, the test set).
``--merge`` writes one report from runs of the same settings on disjoint seeds (one process per core)
or with other strategies on the same seeds (their round 0 must agree: checked).

Strategies: ``random``, ``first`` (the next in name order, as MONAI Label's ``First``),
``epistemic``, ``tta``, ``classifier``, ``combined`` -- the uncertainty ones score the pool with
:class:`radcascade.uncertainty.CascadeUncertainty` and rank it with
:func:`radcascade.active_learning.rank`, the code the server's strategies run; ``combined`` with
a diversity penalty (0.5, the app's default until 2026-11-23), ``combined-nodiv`` without it (the
app's default now).
``epistemic-lesion`` / ``tta-lesion`` rank by the lesion stage's share of those scores only (the app
with ``--conf al_lesion_weight 1``).

Metrics on the test set: organ Dice (mean over studies), lesion Dice (pooled over the test set:
many studies have no lesion), lesion detection recall (a true lesion is detected when a predicted
lesion overlaps it with IoU >= 0.1, 26-connected components) and false positives per study, and
the classifier's ROC AUC on the test set's *true* lesions (so it measures the classifier, not the
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.utils import set_determinism

from radcascade.active_learning import BENCHMARKED_DIVERSITY, Candidate, Diversity, descriptor, rank, score_value
from radcascade.cascade import Cascade
from radcascade.classifier import ClassifierConfig, LesionSample, lesion_samples
from radcascade.classifier_training import train_classifier_from_cases
from radcascade.evaluation import (LesionDetection, classification_metrics, dice, lesion_detection,
                                   paired_comparison)
from radcascade.experiments.common import mean_std, meta, pyplot
from radcascade.labels import LabelContract
from radcascade.networks import UNetSpec
from radcascade.patches import PatchConfig
from radcascade.sample_data import LOW_DOSE_NOISE_HU, STANDARD_NOISE_HU, Study, generate_datastore
from radcascade.training import TrainConfig, Trainer, TrainingCase
from radcascade.uncertainty import CascadeUncertainty, StudyUncertainty
from radcascade.volumes import Volume, load_volume

# The tests' small studies: the sample set's anatomy in mm, at coarser voxels (CPU budget).
SHAPE = (80, 80, 32)
SPACING = (4.0, 4.0, 6.0)
ORGAN_SPACING = (8.0, 8.0, 12.0)
LESION_SPACING = SPACING
PATCH = (32, 32, 16)
# A small UNet with dropout (MC dropout needs it); the app's defaults are (16, 32, 64, 128).
SMALL_UNET = UNetSpec(channels=(8, 16, 32), strides=(2, 2), num_res_units=1, dropout=0.1)
# Lesions of one voxel (0.096 ml here) are noise, as the app's 0.02 ml is at its 2.5x2.5x4 mm.
MIN_LESION_ML = 0.1
TEST_SEED = 9100
STRATEGIES = ("random", "first", "epistemic", "tta", "classifier", "combined", "combined-nodiv",
              "epistemic-lesion", "tta-lesion")
# Benchmark names of a score ranked with the lesion stage's uncertainty only (the app's `--conf al_lesion_weight 1`).
LESION_ONLY = {"epistemic-lesion": "epistemic", "tta-lesion": "tta"}
PICKED = "picked_with_lesions"  # pool studies with >= 1 lesion among those labelled so far
PICKED_LOW_DOSE = "picked_low_dose"
METRICS = ("organ_dice", "lesion_dice", "detection_recall", "fp_per_study", "classifier_auc")
LOW_DOSE_METRICS = ("low_dose_organ_dice", "low_dose_lesion_dice")


@dataclass
class TestSet:
    studies: list[Study]
    volumes: list[Volume]
    lesions: list[LesionSample]
    low_dose: frozenset[int] = frozenset()  # indices of the studies generated with the low-dose protocol


@dataclass
class Evaluation:
    """The cascade's figures on the test set after one round."""

    organ_dice: float
    lesion_dice: float
    detection_recall: float | None
    fp_per_study: float
    classifier_auc: float | None
    low_dose_organ_dice: float | None = None  # the same figures on the low-dose test studies only
    low_dose_lesion_dice: float | None = None


@dataclass
class Row:
    seed: int
    strategy: str
    round: int
    labelled: int
    picked: list[str]
    picked_with_lesions: int  # cumulative: labelled pool studies that hold at least one lesion
    picked_low_dose: int  # cumulative: labelled pool studies of the low-dose protocol
    train_s: float
    score_s: float
    metrics: Evaluation


def make_studies(folder: Path, n: int, seed: int, prefix: str, lesion_free: frozenset[int] = frozenset(),
                 low_dose: frozenset[int] = frozenset()) -> list[Study]:
    """``n`` studies with their labels written (the simulated annotator's ground truth)."""
    return generate_datastore(folder, n, 0, seed=seed, shape=SHAPE, spacing=SPACING, prefix=prefix,
                              lesion_free=lesion_free, low_dose=low_dose)


def screening_indices(seed: int, initial: int, pool: int, fraction: float) -> frozenset[int]:
    """Which pool studies are generated without lesions (``fraction`` of the pool, chosen by ``seed``);
    the starting studies keep theirs (a project starts from a few known positive cases)."""
    count = int(round(fraction * pool))
    chosen = np.random.default_rng(seed).choice(pool, size=count, replace=False)
    return frozenset(int(initial + i) for i in chosen)


def low_dose_indices(seed: int, initial: int, pool: int, fraction: float) -> frozenset[int]:
    """Which pool studies come from the low-dose protocol (``fraction`` of the pool, chosen by ``seed``,
    independently of the lesion-free ones); the starting studies are all routine-protocol studies."""
    count = int(round(fraction * pool))
    chosen = np.random.default_rng(10_000 + seed).choice(pool, size=count, replace=False)
    return frozenset(int(initial + i) for i in chosen)


def case(folder: Path, name: str) -> TrainingCase:
    return TrainingCase(name, folder / f"{name}.nii.gz", folder / "labels" / "final" / f"{name}.nii.gz")


def train_round(model_dir: Path, cases: list[TrainingCase], epochs: int, seed: int, contract: LabelContract) -> None:
    """Retrain organ, lesion (warm from ``model_dir`` when present) and classifier (deep features).

    Unlike the app (20% of the studies held out, best validation epoch published), every labelled
    study trains and the epoch with the lowest training loss is published: with 3-12 studies the
    validation Dice of one or two studies is noise (a first run published an epoch-1 lesion model,
    validation Dice 0.007 against 0.0 later, that painted thousands of specks).

    The augmentation streams are seeded from ``seed`` (MONAI's ``Compose`` takes its seed from
    ``set_determinism``), so two strategies that pick the same studies train the same models."""
    quiet = lambda msg: None  # noqa: E731
    set_determinism(seed)
    for stage, spacing in (("organ", ORGAN_SPACING), ("lesion", LESION_SPACING)):
        cfg = TrainConfig(stage=stage, max_epochs=epochs, seed=seed, spec=SMALL_UNET, spacing=spacing,
                          patch_size=PATCH, samples_per_volume=4, amp=False, val_fraction=0.0)
        Trainer(cfg, contract, model_dir / f"{stage}.pt", device=torch.device("cpu"), progress=quiet).fit(cases)
    try:
        train_classifier_from_cases(cases, contract, ClassifierConfig(mode="features", seed=seed), PatchConfig(),
                                    model_dir / "classifier.pt", device=torch.device("cpu"), progress=quiet)
    except ValueError as e:  # e.g. lesions of one class only so far: keep the previous classifier, if any
        print(f"    classifier not retrained: {e}", flush=True)


def cascade_of(model_dir: Path, contract: LabelContract) -> Cascade:
    return Cascade.in_folder(contract, model_dir, torch.device("cpu"), amp=False, min_lesion_ml=MIN_LESION_ML)


def _pooled_dice(overlaps: list[tuple[float, float]]) -> float:
    """Dice pooled over studies from per-study (intersection, |pred| + |truth|)."""
    inter, total = sum(o[0] for o in overlaps), sum(o[1] for o in overlaps)
    return 1.0 if total == 0 else 2 * inter / total


def evaluate(cascade: Cascade, test: TestSet) -> Evaluation:
    organ, overlaps = [], []
    detection = LesionDetection(0, 0, 0, 0)
    for study, volume in zip(test.studies, test.volumes):
        label = cascade.run(volume).label
        organ.append(dice(label >= 1, study.label >= 1))
        p, t = label >= 2, study.label >= 2
        overlaps.append((float((p & t).sum()), float(p.sum() + t.sum())))
        detection = detection + lesion_detection(p, t)
    auc = None
    loaded = cascade.classifier_model.get() if cascade.classifier_model else None
    if loaded is not None and test.lesions:
        probs = loaded.network.predict_proba(torch.stack([s.patches for s in test.lesions])).cpu().numpy()
        auc = classification_metrics([s.label for s in test.lesions], probs, 2).auc
    low = sorted(test.low_dose)
    return Evaluation(float(np.mean(organ)), _pooled_dice(overlaps), detection.recall,
                      detection.false_positives / len(test.studies), auc,
                      float(np.mean([organ[i] for i in low])) if low else None,
                      _pooled_dice([overlaps[i] for i in low]) if low else None)


def score_pool(cascade: Cascade, volumes: dict[str, Volume], names: list[str]) -> dict[str, StudyUncertainty]:
    scorer = CascadeUncertainty(cascade)
    return {name: scorer.score(volumes[name]) for name in names}


def select(strategy: str, remaining: list[str], n: int, rng: random.Random,
           scores: dict[str, StudyUncertainty] | None, diversity: Diversity) -> list[str]:
    """The ``n`` studies a strategy hands out next (one annotator, so ``top_k`` = 1)."""
    if strategy == "random":
        return rng.sample(sorted(remaining), n)
    if strategy == "first":
        return sorted(remaining)[:n]
    score = "combined" if strategy.startswith("combined") else LESION_ONLY.get(strategy, strategy)
    lesion_weight = 1.0 if strategy in LESION_ONLY else None
    records = {name: scores[name].to_json() for name in remaining}
    candidates = [Candidate(name, score_value(r, score, lesion_weight=lesion_weight), descriptor(r))
                  for name, r in records.items()]
    return [c.id for c in rank(candidates, rng, diversity if strategy == "combined" else None, limit=n)]


def run_seed(seed: int, a, test: TestSet, work: Path, contract: LabelContract) -> list[Row]:
    folder = work / f"seed{seed}"
    lesion_free = screening_indices(seed, a.initial, a.pool, a.lesion_free_pool)
    low_dose = low_dose_indices(seed, a.initial, a.pool, a.low_dose_pool)
    studies = make_studies(folder, a.initial + a.pool, 100 + seed, f"s{seed}", lesion_free, low_dose)
    names = [s.name for s in studies]
    has_lesion = {s.name: bool((s.label >= 2).any()) for s in studies}
    is_low_dose = {s.name: i in low_dose for i, s in enumerate(studies)}
    initial, pool = names[:a.initial], names[a.initial:]
    volumes = {name: load_volume(folder / f"{name}.nii.gz") for name in pool}
    t = time.time()
    base = work / f"seed{seed}-round0"
    train_round(base, [case(folder, n) for n in initial], a.initial_epochs, 1000 * seed, contract)
    train_s = time.time() - t
    cascade = cascade_of(base, contract)
    rows = [Row(seed, s, 0, len(initial), [], 0, 0, train_s, 0.0, evaluate(cascade, test)) for s in a.strategies]
    print(f"seed {seed} round 0: {len(initial)} labelled, {rows[0].metrics} ({train_s:.0f}s); "
          f"pool: {sum(has_lesion[n] for n in pool)} of {len(pool)} studies with lesions, "
          f"{sum(is_low_dose[n] for n in pool)} low-dose", flush=True)
    t = time.time()
    round0_scores = score_pool(cascade, volumes, pool) if any(s not in ("random", "first") for s in a.strategies) else None
    round0_score_s = time.time() - t
    diversity = BENCHMARKED_DIVERSITY

    for strategy in a.strategies:
        model_dir = work / f"seed{seed}-{strategy}"
        shutil.copytree(base, model_dir)
        cascade = cascade_of(model_dir, contract)
        rng = random.Random(seed)
        labelled, remaining = list(initial), list(pool)
        for r in range(1, a.rounds + 1):
            t = time.time()
            scores = None
            if strategy not in ("random", "first"):
                scores = round0_scores if r == 1 else score_pool(cascade, volumes, remaining)
            score_s = round0_score_s if r == 1 and scores is not None else time.time() - t
            picked = select(strategy, remaining, a.per_round, rng, scores, diversity)
            labelled += picked
            remaining = [n for n in remaining if n not in picked]
            t = time.time()
            train_round(model_dir, [case(folder, n) for n in labelled], a.epochs, 1000 * seed + r, contract)
            train_s = time.time() - t
            found = sum(has_lesion[n] for n in labelled[len(initial):])
            low = sum(is_low_dose[n] for n in labelled[len(initial):])
            row = Row(seed, strategy, r, len(labelled), picked, found, low, train_s, score_s, evaluate(cascade, test))
            rows.append(row)
            print(f"seed {seed} {strategy:<14} round {r}: +{picked} ({found} with lesions, {low} low-dose) -> {row.metrics} "
                  f"(score {score_s:.0f}s, train {train_s:.0f}s)", flush=True)
    return rows


LOWER_IS_BETTER = frozenset({"fp_per_study"})
# Metrics compared seed by seed with random, per round and over the curve.
PAIRED_METRICS = ("lesion_dice", "detection_recall", "organ_dice", "fp_per_study")


class SeedTable:
    """The rows by (strategy, round, seed); values come aligned to ``seeds``, None where a strategy
    has no row for a seed (merged runs may cover other seeds per strategy), so pairs stay paired."""

    def __init__(self, rows: list[Row]):
        self.by = {(r.strategy, r.round, r.seed): r for r in rows}
        self.seeds = sorted({r.seed for r in rows})

    def values(self, strategy: str, rnd: int, metric: str) -> list:
        out = []
        for seed in self.seeds:
            row = self.by.get((strategy, rnd, seed))
            if row is None:
                out.append(None)
            else:
                out.append(getattr(row, metric) if metric in (PICKED, PICKED_LOW_DOSE) else getattr(row.metrics, metric))
        return out

    def curve_means(self, strategy: str, rounds: range, metric: str) -> list:
        """Per seed, the metric averaged over ``rounds`` (None unless the seed has every round)."""
        per_round = [self.values(strategy, r, metric) for r in rounds]
        return [None if any(v is None for v in seed) else float(np.mean(seed)) for seed in zip(*per_round)]


def summarise(rows: list[Row], strategies, rounds: int, low_dose: bool = False) -> tuple[str, str]:
    """The final-round table (mean ± std over seeds, and wins over random per seed) and a per-round table."""
    table = SeedTable(rows)
    columns = (PICKED, *METRICS) if not low_dose else (PICKED, PICKED_LOW_DOSE, *METRICS, *LOW_DOSE_METRICS)
    head = "| strategy | " + " | ".join(columns) + " |"
    lines = [head, "|---|" + "---|" * len(columns)]
    for strategy in strategies:
        cells = []
        for m in columns:
            cell = mean_std(table.values(strategy, rounds, m))
            if strategy != "random":
                try:
                    c = paired_comparison(table.values(strategy, rounds, m), table.values("random", rounds, m),
                                          higher_is_better=m not in LOWER_IS_BETTER)
                    cell += f" ({c.wins}/{c.n})"
                except ValueError:  # no seed with both
                    cell += " (0/0)"
            cells.append(cell)
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    final = "\n".join(lines)
    curve = ["| strategy | metric | " + " | ".join(f"round {r}" for r in range(rounds + 1)) + " |",
             "|---|---|" + "---|" * (rounds + 1)]
    for strategy in strategies:
        for m in [c for c in columns if c not in LOWER_IS_BETTER]:
            curve.append(f"| {strategy} | {m} | "
                         + " | ".join(mean_std(table.values(strategy, r, m)) for r in range(rounds + 1)) + " |")
    return final, "\n".join(curve)


def paired_table(rows: list[Row], strategies, rounds: int) -> str:
    """Each strategy minus random on the same seed: per round after round 0, and the mean over those
    rounds (the area under the learning curve); wins, and one-sided sign / t-test p-values."""
    table = SeedTable(rows)
    later = range(1, rounds + 1)
    lines = ["| strategy | metric | " + " | ".join(f"round {r}" for r in later) + f" | rounds 1-{rounds} mean |",
             "|---|---|" + "---|" * (rounds + 1)]
    for strategy in [s for s in strategies if s != "random"]:
        for metric in PAIRED_METRICS:
            better = metric not in LOWER_IS_BETTER
            cells = [_paired_cell(table.values(strategy, r, metric), table.values("random", r, metric), better)
                     for r in later]
            cells.append(_paired_cell(table.curve_means(strategy, later, metric),
                                      table.curve_means("random", later, metric), better))
            lines.append(f"| {strategy} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired_cell(method, baseline, higher_is_better: bool) -> str:
    try:
        return paired_comparison(method, baseline, higher_is_better).text()
    except ValueError:
        return "-"


def plot(rows: list[Row], strategies, rounds: int, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    seeds = sorted({r.seed for r in rows})
    by = {(r.strategy, r.round, r.seed): r for r in rows}
    for ax, m in zip(axes, ("organ_dice", "lesion_dice", "detection_recall", "classifier_auc")):
        for strategy in strategies:
            xs, mean, std = [], [], []
            for rnd in range(rounds + 1):
                v = [getattr(by[(strategy, rnd, s)].metrics, m) for s in seeds if (strategy, rnd, s) in by]
                v = [x for x in v if x is not None]
                if v:
                    xs.append(np.mean([by[(strategy, rnd, s)].labelled for s in seeds if (strategy, rnd, s) in by]))
                    mean.append(np.mean(v))
                    std.append(np.std(v))
            style = "--" if strategy in ("random", "first") else "-"
            ax.errorbar(xs, mean, yerr=std, label=strategy, linestyle=style, marker="o", capsize=2, alpha=0.85)
        ax.set_xlabel("labelled studies")
        ax.set_title(m.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Simulated annotation loop on generated studies (mean ± std over {len(seeds)} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def pool_text(fraction: float) -> str:
    if not fraction:
        return "every study draws 0-5 lesions (about 1 in 6 has none)"
    return (f"a screening worklist: {fraction:.0%} of the pool is generated without lesions (same anatomy), the "
            f"rest draws 0-5; the starting studies draw 0-5; `{PICKED}` counts the picked studies that hold a lesion")


def protocol_text(pool_fraction: float, test_fraction: float) -> str:
    if not pool_fraction and not test_fraction:
        return ""
    return (f"- protocols: the starting studies are routine-dose (noise {STANDARD_NOISE_HU} HU std); {pool_fraction:.0%} "
            f"of the pool and {test_fraction:.0%} of the test set come from a low-dose protocol (noise "
            f"{LOW_DOSE_NOISE_HU} HU std, same anatomy and lesions) the starting models never saw; "
            f"`{PICKED_LOW_DOSE}` counts the picked low-dose studies, `low_dose_*` are the figures on the low-dose "
            f"test studies only\n")


def apply_defaults(a) -> None:
    """Fill the options that depend on others (``--low-dose-test``, ``--quick``) in place."""
    if a.low_dose_test is None:
        a.low_dose_test = a.low_dose_pool
    if a.quick:
        a.seeds, a.pool, a.per_round, a.rounds, a.test, a.initial_epochs, a.epochs = [0], 6, 2, 1, 4, 20, 2


def make_test_set(folder: Path, n: int, low_dose_fraction: float) -> TestSet:
    """The held-out test studies (seed ``TEST_SEED``), their volumes and their true lesions."""
    low_dose_test = frozenset(range(int(round(low_dose_fraction * n))))
    test_studies = make_studies(folder, n, TEST_SEED, "test", low_dose=low_dose_test)
    return TestSet(test_studies, [load_volume(folder / f"{s.name}.nii.gz") for s in test_studies],
                   [x for s in test_studies
                    for x in lesion_samples(s.name, s.image.astype(np.float32), s.spacing, s.label, PatchConfig())],
                   low_dose_test)


def run(a, command: str) -> tuple[dict, list[Row]]:
    """The loop for every seed of ``a`` (the script's options, defaults applied); the record and rows."""
    torch.set_num_threads(a.threads)
    contract = LabelContract()
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="radcascade-al-"))
    try:
        test = make_test_set(work / "test", a.test, a.low_dose_test)
        print(f"test set: {a.test} studies, {len(test.lesions)} lesions "
              f"(classes {np.bincount([s.label for s in test.lesions], minlength=2).tolist()})", flush=True)
        rows = [row for seed in a.seeds for row in run_seed(seed, a, test, work, contract)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {**meta(command), "minutes": round((time.time() - t0) / 60, 1), "seeds": a.seeds,
              "initial": a.initial, "pool": a.pool, "per_round": a.per_round, "rounds": a.rounds,
              "test_studies": a.test, "test_lesions": len(test.lesions), "initial_epochs": a.initial_epochs,
              "epochs": a.epochs, "lesion_free_pool": a.lesion_free_pool, "low_dose_pool": a.low_dose_pool,
              "low_dose_test": a.low_dose_test, "strategies": a.strategies, "torch_threads": a.threads,
              "study_shape": SHAPE, "study_spacing_mm": SPACING, "organ_spacing_mm": ORGAN_SPACING,
              "lesion_spacing_mm": LESION_SPACING, "min_lesion_ml": MIN_LESION_ML, "patch": PATCH,
              "unet": SMALL_UNET.to_dict(), "classifier": "deep features (efficientnet-lite0, logreg)",
              "combined_diversity": asdict(BENCHMARKED_DIVERSITY)}
    return record, rows


def default_stem_name(a) -> str:
    return a.name or ("active_learning" + ("-screening" if a.lesion_free_pool else "") + ("-quick" if a.quick else ""))


# Fields of a results file that differ between runs of the same experiment on other seeds or strategies.
PER_RUN = ("command", "machine", "date", "minutes", "seeds", "rows", "merged_from", "strategies", "strategy_seeds")


def row_from_json(r: dict) -> Row:
    """A row of a results file (files from before the low-dose figures lack them: 0 / None)."""
    fields = {f.name for f in dataclasses.fields(Row)} - {"metrics"}
    metric_fields = {f.name for f in dataclasses.fields(Evaluation)}
    return Row(**{k: v for k, v in r.items() if k in fields} | {"picked_low_dose": r.get("picked_low_dose", 0)},
               metrics=Evaluation(**{k: v for k, v in r.items() if k in metric_fields}))


def load_results(path: Path) -> tuple[dict, list[Row]]:
    """The record (settings) and the rows of a results file."""
    part = json.loads(Path(path).read_text())
    return {k: v for k, v in part.items() if k != "rows"}, [row_from_json(r) for r in part["rows"]]


def merge(paths: list[Path], stem: Path) -> None:
    """One report from runs of the same settings: on disjoint seeds (e.g. two processes, one per
    core), or other strategies on the same seeds (a strategy added later). Each (strategy, seed) may
    come from one run only; where runs share a seed, their round 0 (the same starting models) must
    agree, which checks that the loop is deterministic."""
    parts = [json.loads(p.read_text()) for p in paths]
    settings = [{k: v for k, v in p.items() if k not in PER_RUN} for p in parts]
    for path, other in zip(paths[1:], settings[1:]):
        differ = sorted(k for k in set(other) | set(settings[0]) if other.get(k) != settings[0].get(k))
        if differ:
            raise SystemExit(f"{path} was run with other settings than {paths[0]}: {', '.join(differ)}")
    rows, origin, round0 = [], {}, {}
    for path, part in zip(paths, parts):
        for r in part["rows"]:
            key = (r["strategy"], r["seed"], r["round"])
            if key in origin:
                raise SystemExit(f"{r['strategy']} on seed {r['seed']} is in both {origin[key]} and {path.name}")
            origin[key] = path.name
            row = row_from_json(r)
            if r["round"] == 0:
                first = round0.setdefault(r["seed"], (path.name, row.metrics))
                if first[1] != row.metrics:
                    raise SystemExit(f"round 0 of seed {r['seed']} differs between {first[0]} and {path.name}: "
                                     f"not the same starting models")
            rows.append(row)
    strategies = list(dict.fromkeys(s for p in parts for s in p["strategies"]))  # in the runs' order
    strategy_seeds = {s: sorted({r.seed for r in rows if r.strategy == s}) for s in strategies}
    record = {**parts[0], "seeds": sorted({r.seed for r in rows}), "strategies": strategies,
              "minutes": round(sum(p["minutes"] for p in parts), 1),
              "command": " and ".join(f"`{p['command']}`" for p in parts).strip("`"),
              "merged_from": [p.name for p in paths], "date": max(p["date"] for p in parts)}
    if len({tuple(v) for v in strategy_seeds.values()}) > 1:
        record["strategy_seeds"] = strategy_seeds
    write_results(stem, record, rows)


def seeds_text(strategy_seeds: dict | None) -> str:
    if not strategy_seeds:
        return ""
    return ("- seeds per strategy (paired comparisons use the seeds both strategies ran): "
            + "; ".join(f"`{k}` {v}" for k, v in strategy_seeds.items()) + "\n")


def write_results(stem: Path, record: dict, rows: list[Row]) -> None:
    """``stem``.json (settings and every row), .md (tables) and .png (learning curves)."""
    stem.with_suffix(".json").write_text(json.dumps({**record, "rows": [
        {**{k: v for k, v in asdict(row).items() if k != "metrics"}, **asdict(row.metrics)} for row in rows]}, indent=1))
    render_results(stem, record, rows)


def render_results(stem: Path, record: dict, rows: list[Row]) -> None:
    """``stem``.md and .png from a record and its rows (e.g. those of a results file: :func:`load_results`)."""
    stem.with_suffix(".md").write_text(markdown(stem.name, record, rows))
    plot(rows, record["strategies"], record["rounds"], stem.with_suffix(".png"))
    print(f"wrote {stem}.{{json,md,png}} ({record['minutes']} min)")


def markdown(name: str, record: dict, rows: list[Row]) -> str:
    """The report of a run (``name``: the results files' stem, for the plot's link)."""
    r = record
    strategies, rounds = r["strategies"], r["rounds"]
    final, curve = summarise(rows, strategies, rounds, low_dose=bool(r.get("low_dose_pool") or r.get("low_dose_test")))
    print(final)
    parts = f" (merged from {', '.join(r['merged_from'])})" if r.get("merged_from") else ""
    return (
        f"# Active learning: simulated annotation loop (mean ± std over seeds {r['seeds']})\n\n"
        f"- command: `{r['command']}`{parts} ({r['minutes']} min in all, {r['torch_threads']} torch thread(s) each)\n"
        f"{seeds_text(r.get('strategy_seeds'))}"
        f"- machine: {r['machine']}\n- date: {r['date']}\n"
        f"- studies: generated, {SHAPE} voxels at {SPACING} mm; organ UNet at {ORGAN_SPACING} mm, lesion UNet at "
        f"{LESION_SPACING} mm, both {SMALL_UNET.channels} channels, dropout {SMALL_UNET.dropout}, patches {PATCH}\n"
        f"- lesions under {MIN_LESION_ML} ml (one voxel) are dropped; no validation hold-out: every labelled study "
        f"trains, the epoch with the lowest training loss is published\n"
        f"- loop: {r['initial']} labelled to start, a pool of {r['pool']}, {r['per_round']} picked per round, "
        f"{rounds} rounds; round 0 trains {r['initial_epochs']} epochs from scratch, later rounds {r['epochs']} epochs "
        f"warm-started; classifier: deep features (EfficientNet-Lite0 + logistic regression) retrained every round\n"
        f"- pool: {pool_text(r['lesion_free_pool'])}\n"
        f"{protocol_text(r.get('low_dose_pool', 0.0), r.get('low_dose_test', 0.0))}"
        f"- test set: {r['test_studies']} generated studies (seed {TEST_SEED}), {r['test_lesions']} lesions\n"
        f"- `combined` uses a diversity penalty {BENCHMARKED_DIVERSITY.penalty}, radius {BENCHMARKED_DIVERSITY.radius} "
        f"(the app's default until 2026-11-23); `combined-nodiv` the pure ranking (the app's default now)\n\n"
        f"## After the last round ({r['initial'] + rounds * r['per_round']} labelled studies)\n\n"
        f"(k/n): on how many of the n seeds the strategy beat `random` (fp_per_study: lower is better)\n\n"
        f"{final}\n\n## Paired against random, seed by seed\n\n"
        f"Strategy minus random on the same seed (fp_per_study: random minus strategy), mean ± std; wins/seeds; "
        f"one-sided p-values (H1: better than random) of an exact sign test and a paired t-test, not corrected "
        f"for the {max(len(strategies) - 1, 1)} strategies × {len(PAIRED_METRICS)} metrics × {rounds + 1} columns "
        f"compared.\n\n{paired_table(rows, strategies, rounds)}\n\n"
        f"## Learning curves\n\n{curve}\n\n![learning curves]({name}.png)\n")
