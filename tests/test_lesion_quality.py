"""The held-out lesion evaluation: known answers on hand-made outcomes, and one real run."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import PRETRAINED, TINY_SHAPE, TINY_SPACING
from radcascade.cascade import Cascade
from radcascade.labels import LabelContract
from radcascade.lesion_quality import StudyOutcome, bootstrap, evaluate, make_held_out_set, markdown_table, summarise


def _outcome(name, diameters, detected, fp, inter=0, truth=0, pred=0, organ=0.9):
    return StudyOutcome(name, "standard", organ, inter, truth, pred, list(diameters), list(detected), fp)


def test_recall_by_size_band_false_positives_and_pooled_dice():
    outcomes = [
        _outcome("a", [5.0, 12.0, 30.0], [False, True, True], 1, inter=50, truth=100, pred=100),
        _outcome("b", [8.0, 25.0], [True, True], 0, inter=0, truth=20, pred=0),
        _outcome("c", [], [], 2, inter=0, truth=0, pred=30),
    ]
    report = summarise(outcomes, n_boot=200)
    m = {k: v.value for k, v in report.metrics.items()}
    assert m["recall <10 mm"] == 0.5 and m["recall 10-20 mm"] == 1.0 and m["recall >20 mm"] == 1.0
    assert m["recall >=10 mm"] == 1.0 and m["recall (all)"] == 0.8
    assert m["false positives / study"] == 1.0
    assert m["lesion Dice (pooled)"] == pytest.approx(2 * 50 / 250)
    assert m["lesion Dice (mean per study)"] == pytest.approx((0.5 + 0.0) / 2)  # studies with true lesions
    assert report.lesions == 5 and report.lesions_by_band == {
        "<10 mm": 2, "10-20 mm": 1, ">20 mm": 2, ">=10 mm and <10 HU": 0, ">=10 mm and < noise": 0,
        ">=10 mm and Rose SNR <5": 0}  # contrasts, noise and voxels unknown: counted under no criterion
    est = report.metrics["false positives / study"]
    assert est.low <= est.value <= est.high
    assert "| recall <10 mm | 0.500" in markdown_table({"x": report})


def test_lesion_contrast_class_and_recall_by_contrast_and_class():
    """Contrast is the lesion's mean against the organ ring around it, the class its painted value; recall
    of lesions >= 10 mm is reported apart under and over ISODENSE_HU of contrast, and of 10-20 mm lesions
    per class."""
    import numpy as np

    from radcascade.lesion_quality import ISODENSE_HU, describe_true_lesions

    label = np.zeros((40, 40, 20), np.uint8)
    label[5:35, 5:35, 2:18] = 1
    label[10:16, 10:16, 8:12] = 2
    label[24:30, 24:30, 8:12] = 3
    hu = np.where(label == 1, 60.0, -100.0).astype(np.float32)
    hu[label == 2] = 35.0  # hypodense: 25 HU
    hu[label == 3] = 64.0  # near-isodense: 4 HU
    first, second = describe_true_lesions(hu, label)
    assert (first.contrast_hu, first.value) == (pytest.approx(25.0), 2)
    assert (second.contrast_hu, second.value) == (pytest.approx(4.0), 3)
    assert first.squared_deviation_hu2 == pytest.approx(25.0**2 * 144)  # 6 x 6 x 4 voxels

    outcomes = [_outcome("a", [12.0, 30.0, 15.0], [True, False, False], 0)]
    outcomes[0].true_contrast_hu, outcomes[0].true_classes = [25.0, 4.0, 30.0], [2, 3, 3]
    m = {k: v.value for k, v in summarise(outcomes, n_boot=50).metrics.items()}
    assert m[f"recall >=10 mm, contrast <{ISODENSE_HU:g} HU"] == 0.0
    assert m[f"recall >=10 mm, contrast >={ISODENSE_HU:g} HU"] == 0.5
    assert m["recall 10-20 mm, benign"] == 1.0 and m["recall 10-20 mm, malignant"] == 0.0
    # against the study's noise: 25 and 30 HU are over 20 HU of noise, 4 HU is under it
    outcomes[0].image_noise_hu = 20.0
    m = {k: v.value for k, v in summarise(outcomes, n_boot=50).metrics.items()}
    assert m["recall >=10 mm, contrast < noise"] == 0.0 and m["recall >=10 mm, contrast >= noise"] == 0.5
    outcomes[0].image_noise_hu = 28.0  # a low-dose study: the 25 HU lesion (found) is now fainter than the noise
    m = {k: v.value for k, v in summarise(outcomes, n_boot=50).metrics.items()}
    assert m["recall >=10 mm, contrast < noise"] == 0.5 and m["recall >=10 mm, contrast >= noise"] == 0.0
    # Rose's criterion also counts the lesion's size: contrast / noise * sqrt(voxels) against 5
    outcomes[0].true_voxels = [100, 900, 16]  # 25/28*10 = 8.9 (found), 4/28*30 = 4.3, 30/28*4 = 4.3
    report = summarise(outcomes, n_boot=50)
    m = {k: v.value for k, v in report.metrics.items()}
    assert m["recall >=10 mm, Rose SNR <5"] == 0.0 and m["recall >=10 mm, Rose SNR >=5"] == 1.0
    assert report.lesions_by_band[">=10 mm and Rose SNR <5"] == 2


def test_ideal_observer_sees_a_rim_lesion_whose_mean_is_the_organs():
    """Rose's criterion from the mean contrast calls a dark core in a bright rim invisible; the ideal
    observer (signal energy over the noise, estimated on the noisy image) sees it, and agrees with Rose's
    figure for a uniform lesion; recall rows use it once the squared deviations are recorded."""
    import numpy as np

    from radcascade.lesion_quality import describe_true_lesions, ideal_observer_snr

    rng = np.random.default_rng(0)
    sigma = 10.0
    label = np.zeros((48, 48, 24), np.uint8)
    label[4:44, 4:44, 2:22] = 1
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in label.shape), indexing="ij")
    rim_r = np.sqrt((zz - 14) ** 2 + (yy - 14) ** 2 + (xx - 12) ** 2)
    flat_r = np.sqrt((zz - 33) ** 2 + (yy - 33) ** 2 + (xx - 12) ** 2)
    label[rim_r <= 3.5] = 3
    label[flat_r <= 3.5] = 2
    clean = np.where(label >= 1, 60.0, -100.0)
    core, shell = rim_r <= 2.2, (rim_r > 2.2) & (rim_r <= 3.5)
    clean[shell] = 75.0  # a bright rim around a dark core, whose mean is the organ's
    clean[core] = 60.0 - 15.0 * shell.sum() / core.sum()
    clean[flat_r <= 3.5] = 48.0  # a uniform lesion 12 HU darker
    hu = (clean + rng.normal(0.0, sigma, clean.shape)).astype(np.float32)
    rim, flat = describe_true_lesions(hu, label)
    n_rim, n_flat = int((rim_r <= 3.5).sum()), int((flat_r <= 3.5).sum())
    rose_rim = rim.contrast_hu / sigma * math.sqrt(n_rim)
    truth_rim = math.sqrt(((clean[rim_r <= 3.5] - 60.0) ** 2).sum()) / sigma
    assert rose_rim < 5 < ideal_observer_snr(rim.squared_deviation_hu2, n_rim, sigma)
    assert ideal_observer_snr(rim.squared_deviation_hu2, n_rim, sigma) == pytest.approx(truth_rim, rel=0.1)
    assert ideal_observer_snr(flat.squared_deviation_hu2, n_flat, sigma) == pytest.approx(12.0 / sigma * math.sqrt(n_flat), rel=0.25)  # +-1.2 sd
    assert math.isnan(ideal_observer_snr(1.0, 10, 0.0))

    outcomes = [_outcome("a", [12.0, 12.0], [False, True], 0)]
    o = outcomes[0]
    o.true_contrast_hu, o.true_classes = [rim.contrast_hu, flat.contrast_hu], [3, 2]
    o.true_voxels, o.image_noise_hu = [n_rim, n_flat], sigma
    assert summarise(outcomes, n_boot=20).lesions_by_band[">=10 mm and Rose SNR <5"] == 1  # the rim lesion, by its mean
    o.true_squared_deviation_hu2 = [rim.squared_deviation_hu2, flat.squared_deviation_hu2]
    report = summarise(outcomes, n_boot=20)
    assert report.lesions_by_band[">=10 mm and Rose SNR <5"] == 0
    assert report.metrics["recall >=10 mm, Rose SNR >=5"].value == 0.5


def test_bootstrap_of_a_constant_is_the_constant():
    outcomes = [_outcome(str(i), [15.0], [True], 0) for i in range(5)]
    est = bootstrap(outcomes, lambda os: float(len(os)), n_boot=50)
    assert est.value == est.low == est.high == 5.0


def test_served_cascade_on_a_small_held_out_set(tmp_path):
    held_out = make_held_out_set(tmp_path / "heldout", n_studies=3, low_dose_every=3, lesion_free_every=0,
                                 shape=TINY_SHAPE, spacing=TINY_SPACING)
    assert held_out.protocols[held_out.names[0]] == "low-dose"
    cascade = Cascade(LabelContract(), PRETRAINED / "organ.pt", PRETRAINED / "lesion.pt", torch.device("cpu"))
    outcomes = evaluate(cascade, held_out, progress=lambda _: None)
    assert [o.name for o in outcomes] == held_out.names
    for o in outcomes:
        assert 0.5 < o.organ_dice <= 1.0  # the committed organ stage works on unseen studies
        assert len(o.true_diameters_mm) == len(o.detected) and all(d > 0 for d in o.true_diameters_mm)
        assert o.false_positives >= 0 and o.latency_s > 0
    report = summarise(outcomes, n_boot=50)
    assert set(report.by_protocol) == {"low-dose", "standard"}
    assert report.lesions == sum(len(o.detected) for o in outcomes)
    assert not math.isnan(report.metrics["organ Dice (mean)"].value)


def test_smallest_lesion_kept_keeps_big_lesions_then_detections_minus_false_positives():
    import numpy as np

    from radcascade.lesion_quality import ComponentTable, choose_min_lesion_ml

    # study a: a true 12 mm lesion found by a 0.8 ml component; three specks of 0.03-0.12 ml are noise
    a = ComponentTable("a", np.array([0.8, 0.03, 0.05, 0.12]), np.array([12.0]), np.array([[0.6, 0, 0, 0]]))
    # study b: a true 6 mm lesion found only by a 0.1 ml component
    b = ComponentTable("b", np.array([0.1]), np.array([6.0]), np.array([[0.5]]))
    choice = choose_min_lesion_ml([a, b], candidates=(0.02, 0.1, 0.15, 0.5))
    assert choice.chosen == 0.1  # 0.02: 2 found - 3 FP; 0.1: 2 - 1; 0.15: 1 - 0; 0.5: 1 - 0
    # a 10 mm lesion found only by a small component is never dropped for fewer false positives
    c = ComponentTable("c", np.array([0.3, 0.2, 0.2, 0.2]), np.array([10.5]), np.array([[0.4, 0, 0, 0]]))
    assert choose_min_lesion_ml([c], candidates=(0.02, 0.25, 0.5)).chosen == 0.25
    assert choice.curve[0.02]["false_positives_per_study"] == 1.5
    assert choice.curve[0.15] == {"recall": 0.5, "recall_ge_10mm": 1.0, "false_positives_per_study": 0.0}


def test_lesion_stage_mirroring_and_settings_recorded_in_the_model_file(tmp_path):
    """Test-time mirroring averages the flipped passes; settings chosen on validation, written into a
    model file, are what a stage serving that file uses (its own explicit settings win)."""
    import shutil

    from monai.inferers import sliding_window_inference

    from radcascade.checkpoints import WarmModel
    from radcascade.lesion_quality import record_lesion_settings
    from radcascade.stages import LesionStage

    model = tmp_path / "lesion.pt"
    shutil.copy(PRETRAINED / "lesion.pt", model)
    stage = LesionStage(WarmModel(model, torch.device("cpu")))
    loaded = stage.model.get()
    assert stage.settings(loaded) == ((2,), 0.5, 12.0)  # the committed model's choice: mirroring along z
    torch.manual_seed(0)
    x = torch.rand(1, 32, 24, 16)
    net = loaded.network

    def prob(inp):
        with torch.no_grad():
            return torch.softmax(sliding_window_inference(inp[None], (32, 24, 16), 2, net, overlap=0.25,
                                                          mode="gaussian"), 1)[0, 1:2]

    torch.testing.assert_close(stage.probability(net, x, (32, 24, 16)), prob(x))
    mirrored = (prob(x) + prob(x.flip(3)).flip(3)) / 2  # axis 2 of [X, Y, Z] is dim 3 of [C, X, Y, Z]
    torch.testing.assert_close(stage.probability(net, x, (32, 24, 16), (2,)), mirrored, atol=1e-6, rtol=1e-5)

    record_lesion_settings(model, {"mirror_axes": (0, 1), "threshold": 0.4, "margin_mm": None}, "test")
    served = LesionStage(WarmModel(model, torch.device("cpu")))
    assert served.settings(served.model.get()) == ((0, 1), 0.4, 12.0)
    explicit = LesionStage(WarmModel(model, torch.device("cpu")), mirror_axes=(), threshold=0.5, margin_mm=20.0)
    assert explicit.settings(explicit.model.get()) == ((), 0.5, 20.0)


def test_inside_fraction_reads_only_the_overlap_of_the_boxes():
    import numpy as np
    from scipy import ndimage

    from radcascade.cascade import inside_fraction
    from radcascade.preprocessing import BoundingBox
    organ_mask = np.zeros((20, 20, 10), bool)
    organ_mask[2:18, 2:18, 1:9] = True
    organ = BoundingBox((10, 10, 5), (30, 30, 15))
    crop = BoundingBox((5, 5, 2), (40, 40, 20))  # the lesion stage's crop, in volume coordinates
    lesions = np.zeros(crop.shape, bool)
    lesions[10:14, 10:14, 5:9] = True  # volume x 15..18: wholly inside the organ
    lesions[21:25, 10:14, 5:9] = True  # volume x 26..29: organ mask ends at x 27 -> 2 of 4 slabs inside
    lesions[30:33, 30:33, 1:3] = True  # outside the organ's box
    components, n = ndimage.label(lesions)
    objects = ndimage.find_objects(components)
    fractions = [inside_fraction(components, c, objects[c - 1], crop, organ, organ_mask) for c in range(1, n + 1)]
    assert fractions == [1.0, 0.5, 0.0]


def test_lesions_outside_the_organ_are_dropped_by_the_model_files_choice(tmp_path):
    """The served cascade keeps a lesion only when the model file's share of it lies in the organ: with
    the organ shrunk to exclude part of every found lesion, a strict choice drops them, 0 keeps them."""
    import shutil

    import numpy as np
    from scipy import ndimage

    from radcascade.cascade import organ_from_label
    from radcascade.lesion_quality import record_lesion_settings
    from radcascade.volumes import load_label_for, load_volume

    folder = make_held_out_set(tmp_path / "s", 2, 5000, low_dose_every=0, lesion_free_every=0)
    contract = LabelContract()
    for name in ("keep", "strict"):
        (tmp_path / name).mkdir()
        for f in ("organ.pt", "lesion.pt"):
            shutil.copy(PRETRAINED / f, tmp_path / name / f)
    record_lesion_settings(tmp_path / "keep" / "lesion.pt", {"min_inside_organ": 0.0}, "test")
    record_lesion_settings(tmp_path / "strict" / "lesion.pt", {"min_inside_organ": 0.999}, "test")
    counts = {}
    for name in ("keep", "strict"):
        cascade = Cascade(contract, tmp_path / name / "organ.pt", tmp_path / name / "lesion.pt", torch.device("cpu"))
        assert cascade.lesion_min_inside_organ() == {"keep": 0.0, "strict": 0.999}[name]
        counts[name] = 0
        for study in folder.names:
            volume = load_volume(folder.folder / f"{study}.nii.gz")
            label = load_label_for(folder.folder / "labels" / "final" / f"{study}.nii.gz", volume)
            # the organ without the upper half (in z) of every true lesion: found lesions straddle its edge
            comps, n = ndimage.label(label >= 2)
            cut = np.zeros(volume.shape, bool)
            for i, sl in enumerate(ndimage.find_objects(comps), start=1):
                upper = comps[sl] == i
                upper[..., : (sl[2].stop - sl[2].start) // 2] = False
                cut[sl] |= upper
            organ = label >= 1
            result = cascade.run(volume, organ=organ_from_label(organ & ~cut, torch.device("cpu")))
            counts[name] += len(result.lesions)
    assert counts["keep"] > counts["strict"]


def test_organ_stage_mirroring_is_read_from_the_model_file(tmp_path):
    import shutil

    from radcascade.checkpoints import WarmModel
    from radcascade.lesion_quality import record_organ_threshold
    from radcascade.stages import OrganStage

    model = tmp_path / "organ.pt"
    shutil.copy(PRETRAINED / "organ.pt", model)
    stage = OrganStage(WarmModel(model, torch.device("cpu")))
    loaded = stage.model.get()
    assert stage.mirror_axes_for(loaded) == (0, 1, 2) and stage.threshold_for(loaded) == 0.4  # the committed choice
    chosen = record_organ_threshold(model, {0.5: 0.9, 0.4: 0.95, 0.3: 0.95}, "test", mirror_axes=(0, 1))
    assert chosen == 0.4  # a tie keeps the higher cut
    again = OrganStage(WarmModel(model, torch.device("cpu")))
    assert again.mirror_axes_for(again.model.get()) == (0, 1) and again.threshold_for(again.model.get()) == 0.4
    explicit = OrganStage(WarmModel(model, torch.device("cpu")), threshold=0.5, mirror_axes=())
    assert explicit.mirror_axes_for(explicit.model.get()) == () and explicit.threshold_for(explicit.model.get()) == 0.5


def test_confidence_filter_and_its_choice_on_validation(tmp_path):
    """The served cascade drops a lesion whose mean probability is under the model file's choice (ids stay
    1..n); the choice on validation studies never loses a lesion of >= 10 mm that a lower cut keeps, and
    the false positives do not rise as the cut rises."""
    import shutil

    from radcascade.cascade import MIN_MEAN_PROBABILITY_CANDIDATES
    from radcascade.lesion_quality import choose_min_mean_probability, record_lesion_settings
    from radcascade.volumes import load_label_for, load_volume

    held = make_held_out_set(tmp_path / "s", 3, 6000, low_dose_every=0, lesion_free_every=0)
    cases = [(v, load_label_for(held.folder / "labels" / "final" / f"{n}.nii.gz", v))
             for n in held.names for v in [load_volume(held.folder / f"{n}.nii.gz")]]
    for f in ("organ.pt", "lesion.pt"):
        shutil.copy(PRETRAINED / f, tmp_path / f)
    record_lesion_settings(tmp_path / "lesion.pt", {"min_mean_probability": 0.0}, "test")
    cascade = Cascade(LabelContract(), tmp_path / "organ.pt", tmp_path / "lesion.pt", torch.device("cpu"))
    everything = [cascade.run(v) for v, _ in cases]
    found = [f for r in everything for f in r.lesions]
    assert found, "the committed models find lesions on these studies"
    cut = sorted(f.mean_probability for f in found)[len(found) // 2]  # keeps about half
    record_lesion_settings(tmp_path / "lesion.pt", {"min_mean_probability": cut}, "test")
    cascade = Cascade(LabelContract(), tmp_path / "organ.pt", tmp_path / "lesion.pt", torch.device("cpu"))
    assert cascade.lesion_min_mean_probability() == cut
    kept = [cascade.run(v) for v, _ in cases]
    for before, after in zip(everything, kept):
        assert [f.id for f in after.lesions] == list(range(1, len(after.lesions) + 1))
        assert all(f.mean_probability >= cut for f in after.lesions)
        assert sorted(f.voxels for f in after.lesions) == sorted(f.voxels for f in before.lesions if f.mean_probability >= cut)
        assert int((after.label >= 2).sum()) == sum(f.voxels for f in after.lesions)

    confidence = choose_min_mean_probability(cascade, cases)
    assert cascade.min_mean_probability is None  # the trial settings are undone
    assert confidence.noisy is None and confidence.noisy_studies == 0  # routine studies only
    choice = confidence.routine
    assert sorted(choice.curve) == sorted(MIN_MEAN_PROBABILITY_CANDIDATES) and choice.chosen in choice.curve
    recall10 = [choice.curve[t]["recall_ge_10mm"] for t in sorted(choice.curve)]
    fps = [choice.curve[t]["false_positives_per_study"] for t in sorted(choice.curve)]
    assert choice.curve[choice.chosen]["recall_ge_10mm"] == max(recall10)
    assert fps == sorted(fps, reverse=True)


def test_a_noisy_study_gets_the_noisy_cut_and_both_cuts_are_chosen_apart(tmp_path):
    """The image noise the cascade measures in the organ tells generated low-dose studies from routine ones;
    a lesion model file's noisy-study cut applies to the noisy ones only (and says so in the result's notes);
    the chooser picks the two cuts on the two groups, and recording a choice without noisy studies removes
    an earlier noisy cut."""
    import shutil

    from radcascade.checkpoints import read_checkpoint
    from radcascade.lesion_quality import choose_min_mean_probability, record_confidence, record_lesion_settings
    from radcascade.preprocessing import NOISY_STUDY_NOISE_HU

    held = make_held_out_set(tmp_path / "s", 4, 6000, low_dose_every=2, lesion_free_every=0)
    cases = held.cases()
    for f in ("organ.pt", "lesion.pt"):
        shutil.copy(PRETRAINED / f, tmp_path / f)
    model = tmp_path / "lesion.pt"
    record_lesion_settings(model, {"min_mean_probability": 0.0, "min_mean_probability_noisy": 1.01}, "test")
    cascade = Cascade(LabelContract(), tmp_path / "organ.pt", model, torch.device("cpu"))
    routine_found = 0
    for name, (volume, _) in zip(held.names, cases):
        result = cascade.run(volume)
        noisy = held.protocols[name] == "low-dose"
        assert (result.image_noise_hu >= NOISY_STUDY_NOISE_HU) == noisy, (name, result.image_noise_hu)
        # the generator's quantum noise: 6-14 HU routine, 28-40 HU low-dose (organ texture adds a little)
        assert 25 <= result.image_noise_hu <= 45 if noisy else 4 <= result.image_noise_hu <= 18
        cut_noted = any("noisy-study cut" in n for n in result.notes)
        if noisy:
            assert result.lesions == [] and not (result.label >= 2).any() and cut_noted
        else:
            routine_found += len(result.lesions)
            assert not cut_noted
    assert routine_found, "the committed models find lesions in the routine studies"

    confidence = choose_min_mean_probability(cascade, cases)
    assert (cascade.min_mean_probability, cascade.min_mean_probability_noisy) == (None, None)  # undone
    assert confidence.noisy_studies == 2 and confidence.noisy is not None
    assert confidence.noisy.chosen in confidence.noisy.curve and confidence.routine.chosen in confidence.routine.curve
    record_confidence(model, confidence, "test")
    summary = read_checkpoint(model).summary
    assert summary["min_mean_probability"] == confidence.routine.chosen
    assert summary["min_mean_probability_noisy"] == confidence.noisy.chosen and "min_mean_probability_noisy_curve" in summary
    routine_only = choose_min_mean_probability(cascade, [c for n, c in zip(held.names, cases)
                                                         if held.protocols[n] == "standard"])
    record_confidence(model, routine_only, "test")
    assert not any(k.startswith("min_mean_probability_noisy") for k in read_checkpoint(model).summary)


def test_recorded_settings_replace_the_provenance_of_earlier_choices(tmp_path):
    """A value recorded from a served check takes that check as its source; an earlier chooser's curve stays
    only where the recorded value is the one it chose."""
    from radcascade.checkpoints import Checkpoint, publish_checkpoint, read_checkpoint
    from radcascade.lesion_quality import record_lesion_settings
    from radcascade.networks import TINY_UNET

    curve = {"0.7": {"recall": 0.6}, "0.8": {"recall": 0.5}}
    summary = {"min_lesion_ml": 0.2, "min_lesion_ml_curve": {"0.2": {}}, "min_lesion_ml_source": "chooser",
               "min_mean_probability": 0.7, "min_mean_probability_curve": curve, "min_mean_probability_source": "chooser",
               "min_mean_probability_noisy": 0.7, "min_mean_probability_noisy_curve": curve,
               "min_mean_probability_noisy_source": "chooser", "mirror_axes": [2]}
    path = publish_checkpoint(Checkpoint(TINY_UNET, TINY_UNET.build().state_dict(), (2.5, 2.5, 4.0), summary),
                              tmp_path / "lesion.pt")
    record_lesion_settings(path, {"min_lesion_ml": 0.15, "min_mean_probability": 0.7, "min_mean_probability_noisy": 0.8,
                                  "mirror_axes": None}, "served check")
    out = read_checkpoint(path).summary
    assert (out["min_lesion_ml"], out["min_mean_probability"], out["min_mean_probability_noisy"]) == (0.15, 0.7, 0.8)
    assert [k for k in out if k.endswith("_source")] == ["lesion_settings_source"] and out["lesion_settings_source"] == "served check"
    assert out["min_mean_probability_curve"] == curve  # the same value as its chooser's: its curve still applies
    assert "min_lesion_ml_curve" not in out and "min_mean_probability_noisy_curve" not in out
    assert out["mirror_axes"] == [2]  # not set here: unchanged
