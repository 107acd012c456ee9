"""Training the lesion classifier from labelled studies (datastore final labels or a folder).

CLI (the committed starting classifier, deep-features mode, head only: a few KB)::

    python -m radcascade.classifier_training --generate 40 --seed 3000 --mode features \\
        --out apps/radcascade/pretrained/classifier.pt
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from radcascade.distributed import Distributed, init_from_env, shutdown
from radcascade.files import write_json_atomic
from radcascade.classifier import (
    CLASSICAL,
    MODES,
    ClassifierConfig,
    LesionSample,
    lesion_samples,
    publish_classifier,
    split_by_study,
    train_classifier,
)
from radcascade.labels import LabelContract
from radcascade.patches import PatchConfig
from radcascade.radiomics import RadiomicsConfig
from radcascade.training import TrainingCase, cases_from_folder
from radcascade.volumes import load_label_for, load_volume

logger = logging.getLogger(__name__)


def samples_from_cases(cases: Sequence[TrainingCase], contract: LabelContract, patch: PatchConfig,
                       radiomics: RadiomicsConfig | None = None) -> list[LesionSample]:
    """Every labelled lesion (class read through the label-name mapping) as a sample, with its
    radiomics features when ``radiomics`` is given."""
    out: list[LesionSample] = []
    for case in cases:
        volume = load_volume(case.image)
        label = contract.remap_by_name(load_label_for(case.label, volume), case.label_info)
        out.extend(lesion_samples(case.name, volume.array, volume.spacing, label, patch, radiomics=radiomics))
    return out


@dataclass
class ClassifierTrainResult:
    status: str
    mode: str
    family: str  # what was fitted (auto: the chosen candidate's family)
    chosen: str | None  # auto: the chosen candidate
    depth: int | None
    val_auc: float | None
    val_accuracy: float | None
    depth_curve: dict
    train_lesions: int
    val_lesions: int
    train_studies: list[str]
    val_studies: list[str]
    class_counts: dict
    total_time_s: float
    start_ts: int
    published: bool
    model_path: str
    candidates: dict = field(default_factory=dict)  # auto: every candidate's cross-validation AUCs
    message: str = ""

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["best_metric"] = self.val_auc
        d["total_time"] = f"{self.total_time_s:.1f}s"
        return d


def train_classifier_from_cases(
    cases: Sequence[TrainingCase],
    contract: LabelContract,
    cfg: ClassifierConfig,
    patch: PatchConfig,
    model_path: Path,
    stats_path: Path | None = None,
    device: torch.device | None = None,
    progress: Callable[[str], None] | None = None,
) -> ClassifierTrainResult:
    t0 = time.time()
    dist = Distributed.current()  # inside a torch.distributed run: fine-tuning under DDP, rank 0 publishes
    stats_path = stats_path or model_path.with_suffix(".stats.json")
    progress = (progress or logger.info) if dist.main else (lambda message: None)
    if dist.main:
        write_json_atomic(stats_path, {"status": "RUNNING", "start_ts": int(t0), "mode": cfg.mode,
                                       "world_size": dist.world_size})
    samples = samples_from_cases(cases, contract, patch, cfg.radiomics if cfg.needs_radiomics else None)
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        raise ValueError(f"the classifier needs lesions of at least two classes; found {len(samples)} lesions of "
                         f"{[contract.lesion_classes[c] for c in classes]}")
    train, val = split_by_study(samples, cfg.val_fraction, cfg.seed)
    progress(f"[classifier] {len(train)} training / {len(val)} validation lesions, mode {cfg.mode}")
    trained = train_classifier(train, val, contract.num_lesion_classes, cfg, device or dist.device(), progress)
    dist.barrier()  # every rank finished: a rank lost before this point publishes nothing
    if dist.main:
        publish_classifier(trained, contract.lesion_classes, patch, model_path,
                           {"train_lesions": len(train), "val_lesions": len(val), "world_size": dist.world_size})
    counts = np.bincount([s.label for s in samples], minlength=contract.num_lesion_classes)
    result = ClassifierTrainResult(
        "DONE", trained.report.mode, trained.report.family, trained.report.chosen, trained.report.depth,
        trained.report.val_auc, trained.report.val_accuracy,
        {str(k): v for k, v in trained.report.depth_curve.items()}, len(train), len(val),
        sorted({s.study for s in train}), sorted({s.study for s in val}),
        {contract.lesion_classes[i]: int(c) for i, c in enumerate(counts)},
        time.time() - t0, int(t0), True, str(model_path),
        {k: v.to_json() for k, v in trained.report.candidates.items()},
    )
    if dist.main:
        write_json_atomic(stats_path, {**result.to_json(), "world_size": dist.world_size})
    chosen = f" ({result.chosen})" if result.chosen else ""
    progress(f"[classifier] published {model_path}: mode {result.mode}{chosen}, depth {result.depth}, val AUC {result.val_auc}")
    return result


def main(argv: list[str] | None = None) -> None:
    from radcascade.sample_data import generate_datastore

    p = argparse.ArgumentParser(description="Train the lesion classifier on labelled studies.")
    p.add_argument("--studies", type=Path)
    p.add_argument("--generate", type=int, default=0)
    p.add_argument("--seed", type=int, default=3000)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", default="features", choices=MODES)
    p.add_argument("--classical", default="logreg", choices=CLASSICAL)
    p.add_argument("--family", default="default", help="lesion family of --generate (default or matched)")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--backbone", default="efficientnet-lite0")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    studies = a.studies
    if a.generate:
        studies = Path(tempfile.mkdtemp(prefix="radcascade-clf-"))
        generate_datastore(studies, a.generate, 0, seed=a.seed, prefix="clf", family=a.family)
    cfg = ClassifierConfig(mode=a.mode, classical=a.classical, depth=a.depth, epochs=a.epochs, backbone=a.backbone)
    dist = init_from_env()  # under torchrun: one rank of a distributed run
    try:
        train_classifier_from_cases(cases_from_folder(studies), LabelContract(), cfg, PatchConfig(), a.out,
                                    progress=lambda m: print(m, flush=True))
    finally:
        if dist.active:
            shutdown()


def classifier_on_rank(ctx: Distributed, cases: Sequence[TrainingCase], contract: LabelContract, cfg: ClassifierConfig,
                       patch: PatchConfig, model_path: Path, stats_path: Path | None) -> None:
    """One rank of a distributed classifier run (see :func:`radcascade.distributed.spawn`)."""
    train_classifier_from_cases(cases, contract, cfg, patch, model_path, stats_path)


if __name__ == "__main__":
    main()
