import json

import numpy as np
import SimpleITK as sitk

from radcascade.cascade import MIN_MEAN_PROBABILITY_CANDIDATES
from radcascade.checkpoints import read_checkpoint
from radcascade.labels import LabelContract
from radcascade.lesion_quality import MIN_LESION_ML_CANDIDATES
from radcascade.networks import TINY_UNET
from radcascade.stages import ORGAN_THRESHOLDS
from radcascade.training import (
    TrainConfig,
    Trainer,
    TrainingCase,
    cases_from_folder,
    prepare_case,
    small_lesion_weights,
    split_cases,
)

CONTRACT = LabelContract()


def test_split_is_by_study_and_deterministic(tiny_studies):
    cases = [TrainingCase(f"s{i}", tiny_studies.folder, tiny_studies.folder) for i in range(10)]
    train, val = split_cases(cases, 0.2, seed=0)
    assert len(val) == 2 and not {c.name for c in train} & {c.name for c in val}
    assert split_cases(cases, 0.2, seed=0) == (train, val)
    assert len(split_cases(cases[:3], 0.2, seed=0)[1]) == 1
    everything, none = split_cases(cases[:3], 0.0, seed=0)  # no hold-out asked for: none
    assert sorted(c.name for c in everything) == ["s0", "s1", "s2"] and none == []


def test_prepared_targets_follow_label_names_not_values(tiny_studies, tmp_path):
    case = cases_from_folder(tiny_studies.folder)[0]
    label = sitk.ReadImage(str(case.label))
    arr = sitk.GetArrayFromImage(label)
    order = {"lesion malignant": 1, "liver": 2, "lesion benign": 3}
    swapped = np.zeros_like(arr)
    for name, idx in order.items():
        swapped[arr == CONTRACT.value_of(name)] = idx
    out = sitk.GetImageFromArray(swapped)
    out.CopyInformation(label)
    sitk.WriteImage(out, str(tmp_path / "swapped.nii.gz"))
    info = tuple({"name": n, "idx": i} for n, i in order.items())
    renamed = TrainingCase(case.name, case.image, tmp_path / "swapped.nii.gz", info)
    for stage in ("organ", "lesion"):
        cfg = TrainConfig(stage=stage)
        a, b = prepare_case(case, cfg, CONTRACT), prepare_case(renamed, cfg, CONTRACT)
        assert a.target.sum() > 0 or stage == "lesion"
        assert bool((a.target == b.target).all())


def test_trainer_publishes_best_model_and_stats(tiny_studies, tmp_path):
    cases = cases_from_folder(tiny_studies.folder)
    for stage in ("organ", "lesion"):
        cfg = TrainConfig(stage=stage, max_epochs=2, spec=TINY_UNET, patch_size=(32, 32, 16), samples_per_volume=1)
        model = tmp_path / f"{stage}.pt"
        result = Trainer(cfg, CONTRACT, model).fit(cases)
        assert result.status == "DONE" and result.published and result.epochs_done == 2
        assert len(result.train_loss) == 2 and len(result.val_dice) == 2
        ck = read_checkpoint(model)
        assert ck.spec == TINY_UNET and ck.summary["epochs"] == 2
        if stage == "organ":  # the cut chosen on validation, with the Dice of every candidate
            curve = {float(k): v for k, v in ck.summary["organ_threshold_curve"].items()}
            assert sorted(curve) == sorted(ORGAN_THRESHOLDS)
            assert curve[ck.summary["organ_threshold"]] == max(curve.values()) == result.best_metric
        else:  # the smallest lesion and the least mean probability kept, chosen on validation
            assert ck.summary["min_lesion_ml"] in MIN_LESION_ML_CANDIDATES
            curve = {float(k): v for k, v in ck.summary["min_mean_probability_curve"].items()}
            assert sorted(curve) == sorted(MIN_MEAN_PROBABILITY_CANDIDATES) and ck.summary["min_mean_probability"] in curve
        stats = json.loads(model.with_suffix(".stats.json").read_text())
        assert stats["status"] == "DONE" and stats["best_metric_epoch"] in (1, 2)
        # a second run warm-starts from the published model
        again = Trainer(cfg, CONTRACT, model).fit(cases)
        assert again.warm_started


def test_reported_validation_dice_is_the_dice_of_the_served_stage(tiny_studies, tmp_path):
    """Parity: what train_stats reports (and Slicer shows as accuracy) is what the server answers."""
    import pytest
    import torch

    from conftest import PRETRAINED
    from radcascade.cascade import Cascade, organ_from_label
    from radcascade.training import read_case

    cases = cases_from_folder(tiny_studies.folder)
    for stage in ("organ", "lesion"):
        cfg = TrainConfig(stage=stage, max_epochs=2, spec=TINY_UNET, patch_size=(32, 32, 16), samples_per_volume=1,
                          val_fraction=0.34, spacing=(4.0, 4.0, 6.0) if stage == "lesion" else None)
        model = tmp_path / f"{stage}.pt"
        result = Trainer(cfg, CONTRACT, model).fit(cases)
        assert result.val_cases and result.best_metric is not None
        files = {"organ": PRETRAINED / "organ.pt", "lesion": PRETRAINED / "lesion.pt", stage: model}
        served = Cascade(CONTRACT, files["organ"], files["lesion"], torch.device("cpu"))
        inter = total = 0
        for case in (c for c in cases if c.name in result.val_cases):
            volume, label = read_case(case, CONTRACT)
            image = torch.from_numpy(volume.array).unsqueeze(0)
            if stage == "organ":  # what /infer/organ answers
                organ = served.organ_stage(image, volume.spacing)
                pred = np.zeros(volume.shape, bool)
                if organ.found:
                    pred[organ.box.slices] = organ.mask.numpy()
                truth = label >= 1
            else:  # what /infer/lesion answers inside a submitted organ
                pred = served.run(volume, organ=organ_from_label(label >= 1, torch.device("cpu"))).label >= 2
                truth = label >= 2
            inter += int((pred & truth).sum())
            total += int(pred.sum() + truth.sum())
        assert result.best_metric == pytest.approx(2 * inter / total if total else 1.0, abs=1e-5), stage


def test_lesion_validation_runs_the_small_lesion_detector_published_beside_it(tiny_studies, tmp_path):
    """The served lesion stage runs a small-lesion detector published next to the lesion model, so the
    trainer's validation Dice (what Slicer shows) is measured with it too: a lesion network that finds
    nothing, trained on at a negligible learning rate, scores 0 alone and what the detector (the committed
    lesion network) finds with it beside."""
    import shutil

    import pytest
    import torch

    from conftest import PRETRAINED, lesion_model_answering
    from radcascade.cascade import Cascade, organ_from_label
    from radcascade.stages import SMALL_LESION_MODEL_FILE
    from radcascade.training import read_case

    model, detector = tmp_path / "lesion.pt", tmp_path / SMALL_LESION_MODEL_FILE
    lesion_model_answering(model, -1000.0)  # background everywhere
    cases = cases_from_folder(tiny_studies.folder)
    cfg = TrainConfig(stage="lesion", max_epochs=1, learning_rate=1e-12, patch_size=(32, 32, 16),
                      samples_per_volume=1, val_fraction=0.34)
    alone = Trainer(cfg, CONTRACT, model).fit(cases)
    shutil.copy(PRETRAINED / "lesion.pt", detector)
    result = Trainer(cfg, CONTRACT, model).fit(cases)

    served = Cascade(CONTRACT, PRETRAINED / "organ.pt", model, torch.device("cpu"), small_lesion_model=detector)
    inter = total = 0
    for case in (c for c in cases if c.name in result.val_cases):
        volume, label = read_case(case, CONTRACT)
        pred = served.run(volume, organ=organ_from_label(label >= 1, torch.device("cpu"))).label >= 2
        inter += int((pred & (label >= 2)).sum())
        total += int(pred.sum() + (label >= 2).sum())
    assert alone.best_metric == 0.0 and result.best_metric > 0.5
    assert result.best_metric == pytest.approx(2 * inter / total, abs=1e-5)


def test_organ_cut_follows_the_model_file(tiny_studies, tmp_path):
    """A lower organ cut recorded in the model file widens the served organ (a superset of the 0.5 cut)."""
    from dataclasses import replace

    import torch

    from conftest import PRETRAINED
    from radcascade.checkpoints import WarmModel, publish_checkpoint
    from radcascade.stages import ORGAN_THRESHOLD_KEY, OrganStage
    from radcascade.volumes import load_volume

    ck = read_checkpoint(PRETRAINED / "organ.pt")
    low = tmp_path / "organ.pt"
    publish_checkpoint(replace(ck, summary={**ck.summary, ORGAN_THRESHOLD_KEY: 0.1}), low)
    volume = load_volume(cases_from_folder(tiny_studies.folder)[0].image)
    image = torch.from_numpy(volume.array).unsqueeze(0)
    masks = {}
    for name, stage in {"half": OrganStage(WarmModel(low, torch.device("cpu")), threshold=0.5),
                        "file": OrganStage(WarmModel(low, torch.device("cpu")))}.items():
        organ = stage(image, volume.spacing)
        masks[name] = np.zeros(volume.shape, bool)
        masks[name][organ.box.slices] = organ.mask.numpy()
    assert masks["half"].any() and masks["file"].sum() > masks["half"].sum()
    assert not (masks["half"] & ~masks["file"]).any()


def test_small_lesions_weigh_more_in_the_loss_and_a_run_uses_it(tiny_studies, tmp_path):
    """A lesion's voxels weigh (20 mm sphere's voxels / its voxels), clipped to [1, max]; background 1. The
    weighted loss is the plain one with weights 1 and grows with the weight of a misclassified lesion."""
    import pytest
    import torch

    from radcascade.distributed import BatchDiceCELoss

    target = torch.zeros(2, 1, 40, 40, 20)
    target[0, 0, 2:6, 2:6, 2:4] = 1  # 32 voxels of 2.5 x 2.5 x 4 mm: a ~10 mm lesion
    target[0, 0, 10:30, 10:30, 5:15] = 1  # 4000 voxels: larger than 20 mm
    target[1, 0, 30:32, 30:32, 10] = 1  # 4 voxels: clipped at the maximum
    weights = small_lesion_weights(target, (2.5, 2.5, 4.0), 8.0)
    reference = np.pi / 6 * 20.0**3 / (2.5 * 2.5 * 4.0)
    assert weights[0, 3, 3, 3] == pytest.approx(reference / 32) and weights[0, 20, 20, 10] == 1.0
    assert weights[1, 31, 31, 10] == 8.0 and weights[0, 35, 35, 0] == 1.0

    logits = torch.zeros(2, 2, 40, 40, 20)
    logits[:, 0] = 2.0  # everything called background: the lesions are misclassified
    loss = BatchDiceCELoss()
    assert loss(logits, target, torch.ones(2, 40, 40, 20)) == pytest.approx(float(loss(logits, target)))
    assert loss(logits, target, weights) > loss(logits, target)

    with pytest.raises(ValueError, match="small_lesion_weight"):
        TrainConfig(stage="lesion", small_lesion_weight=0.5)
    cfg = TrainConfig(stage="lesion", max_epochs=1, spec=TINY_UNET, patch_size=(32, 32, 16), samples_per_volume=1,
                      small_lesion_weight=8.0)
    result = Trainer(cfg, CONTRACT, tmp_path / "lesion.pt").fit(cases_from_folder(tiny_studies.folder))
    assert result.status == "DONE" and np.isfinite(result.train_loss).all()
