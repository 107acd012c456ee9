import json

import numpy as np
import pytest
import torch

from radcascade.checkpoints import WarmModel
from radcascade.classifier import (
    ClassifierConfig,
    LesionRegion,
    RadiomicsInputsMissing,
    RadiomicsNet,
    classify_lesions,
    lesion_components,
    lesion_samples,
    load_classifier,
    predict_lesions,
    publish_classifier,
    sample_probabilities,
    split_by_study,
    train_classifier,
)
from radcascade.labels import LabelContract
from radcascade.patches import PatchConfig, lesion_geometry
from radcascade.radiomics import (
    RadiomicsConfig,
    best_single_feature,
    feature_names,
    first_order_columns,
    lesion_features,
)

SMALL = PatchConfig(size=32, views=1)
SHAPE, SPACING = (96, 96, 40), (3.3, 3.3, 4.8)


def _ball(shape=(40, 40, 20), centre=(20, 18, 10), radius_mm=8.0, spacing=(1.0, 1.0, 2.0)):
    idx = np.indices(shape).astype(float)
    r = np.sqrt(sum(((i - c) * s) ** 2 for i, c, s in zip(idx, centre, spacing)))
    return r <= radius_mm


def test_features_of_a_ball_are_what_geometry_and_values_say():
    spacing = (1.0, 1.0, 2.0)
    mask = _ball(spacing=spacing)
    vol = np.where(mask, 30.0, 60.0) + np.random.default_rng(0).normal(0, 5, mask.shape)
    f = lesion_features(vol, spacing, mask)
    got = dict(zip(f.names, f.values))
    assert got["shape_VoxelVolume"] == pytest.approx(mask.sum() * 2.0)
    assert got["shape_Sphericity"] > 0.8
    assert got["firstorder_Mean"] == pytest.approx(vol[mask].mean(), abs=1e-3)
    assert got["firstorder_Maximum"] == pytest.approx(vol[mask].max(), abs=1e-3)
    # a crop of the mask placed at its offset gives the same features as the full mask
    lo = [int(i.min()) for i in np.nonzero(mask)]
    crop = mask[lo[0]:, lo[1]:, lo[2]:]
    np.testing.assert_allclose(lesion_features(vol, spacing, crop, tuple(lo)).values, f.values, rtol=1e-6)
    # a one-voxel "lesion" has no texture: NaN, not an exception
    one = np.zeros((1, 1, 1), bool)
    one[0, 0, 0] = True
    assert np.isnan(lesion_features(vol, spacing, one, (20, 18, 10)).values).any()


def test_one_feature_baseline_picks_the_informative_feature_and_its_direction():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    X = rng.normal(size=(60, 3))
    X[:, 1] -= 2.0 * y  # lower values mean class 1
    rule = best_single_feature(X, y, ("a", "b", "c"))
    assert rule.name == "b" and rule.sign == -1.0 and rule.train_auc > 0.85
    assert best_single_feature(X, y, ("a", "b", "c"), columns=[0, 2]).name in ("a", "c")


def _study_samples(n_studies, family="matched", radiomics=RadiomicsConfig()):
    from radcascade.sample_data import generate_study

    out = []
    for i in range(n_studies):
        st = generate_study(4000 + i, f"s{i:02d}", SHAPE, SPACING, family=family)
        out.extend(lesion_samples(st.name, st.image.astype(np.float32), st.spacing, st.label, SMALL, radiomics=radiomics))
    return out


@pytest.fixture(scope="module")
def samples():
    s = _study_samples(12)
    assert len({x.label for x in s}) == 2 and all(x.radiomics is not None for x in s)
    return s


@pytest.mark.parametrize("mode", ["radiomics", "radiomics+features"])
def test_radiomics_modes_train_publish_reload_and_classify_from_masks(samples, mode, tmp_path):
    from radcascade.sample_data import generate_study

    train, val = split_by_study(samples, 0.25, seed=0)
    trained = train_classifier(train, val, 2, ClassifierConfig(mode=mode))
    assert isinstance(trained.net, RadiomicsNet) and trained.report.family == mode
    path = publish_classifier(trained, ("lesion benign", "lesion malignant"), SMALL, tmp_path / "clf.pt")
    assert path.stat().st_size < 100_000  # the fitted head (and the scaling), never the backbone
    net, ckpt = load_classifier(path.read_bytes(), path, torch.device("cpu"))
    assert ckpt.radiomics is not None and ckpt.radiomics.names == feature_names(RadiomicsConfig())
    np.testing.assert_allclose(sample_probabilities(net, val), sample_probabilities(trained.net, val), atol=1e-5)
    # inference from a volume and its lesion masks, as the cascade has them
    name = max({x.study for x in samples}, key=lambda n: sum(x.study == n for x in samples))
    st = generate_study(4000 + int(name[1:]), name, SHAPE, SPACING, family="matched")
    regions = [LesionRegion(lesion_geometry(m, st.spacing, tuple(s.start for s in sl)), m, tuple(s.start for s in sl))
               for sl, m, _ in lesion_components(st.label) if m.sum() >= 3]
    preds = classify_lesions(net, ckpt, torch.from_numpy(st.image.astype(np.float32)), st.spacing, regions)
    expected = sample_probabilities(net, [s for s in samples if s.study == name])
    np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), expected, atol=1e-5)
    assert all(0 <= p.entropy <= 1 for p in preds)
    with pytest.raises(RadiomicsInputsMissing, match="mask"):
        predict_lesions(net, torch.zeros(1, 1, 3, 32, 32))
    assert WarmModel(path, torch.device("cpu"), loader=load_classifier).get() is not None


def test_a_lesion_without_computable_features_still_gets_probabilities(samples):
    train, val = split_by_study(samples, 0.25, seed=0)
    net = train_classifier(train, val, 2, ClassifierConfig(mode="radiomics")).net
    nan = torch.full((1, net.n_radiomics), float("nan"))
    p = net.predict_proba(nan)
    assert torch.isfinite(p).all() and p.sum().item() == pytest.approx(1.0)


def test_auto_candidates_are_the_apps_and_refit_equals_the_fixed_mode(samples):
    train, val = split_by_study(samples, 0.25, seed=0)
    cfg = ClassifierConfig(mode="auto", auto_families=("radiomics", "features"), cv_folds=2, cv_repeats=2)
    trained = train_classifier(train, val, 2, cfg)
    r = trained.report
    assert set(r.candidates) == {"radiomics", "features"}
    assert all(len(c.fold_aucs) == 4 for c in r.candidates.values())  # 2 folds, repeated twice
    fixed = train_classifier(train, val, 2, ClassifierConfig(mode=r.family))
    np.testing.assert_allclose(sample_probabilities(trained.net, val), sample_probabilities(fixed.net, val), atol=1e-6)
    from radcascade.classifier import auto_candidates

    default = [c.name for c in auto_candidates(ClassifierConfig())]
    assert default == ["radiomics", "features", "radiomics+features", "finetune k=0", "finetune k=1",
                       "finetune k=2", "finetune k=3", "finetune k=5", "finetune k=9"]


def test_training_entry_point_records_every_candidate_in_train_stats(tmp_path):
    """What the serving train task calls: auto over radiomics / deep features, stats JSON with each
    candidate's fold AUCs, and a model file the cascade's loader reads."""
    from radcascade.classifier_training import train_classifier_from_cases
    from radcascade.sample_data import generate_datastore
    from radcascade.training import cases_from_folder

    generate_datastore(tmp_path / "studies", 10, 0, seed=21, shape=SHAPE, spacing=SPACING, family="matched")
    cfg = ClassifierConfig(mode="auto", auto_families=("radiomics", "features"), cv_folds=2, cv_repeats=1)
    model = tmp_path / "classifier.pt"
    result = train_classifier_from_cases(cases_from_folder(tmp_path / "studies"), LabelContract(), cfg, SMALL, model)
    stats = json.loads(model.with_suffix(".stats.json").read_text())
    assert stats["status"] == "DONE" and stats["mode"] == "auto" and stats["chosen"] in ("radiomics", "features")
    assert set(stats["candidates"]) == {"radiomics", "features"}
    assert all(len(c["fold_aucs"]) == 2 for c in stats["candidates"].values())
    assert result.family == stats["chosen"]
    net, ckpt = load_classifier(model.read_bytes(), model, torch.device("cpu"))
    assert (ckpt.radiomics is not None) == (result.family == "radiomics")


def test_radiomics_modes_need_radiomics_features():
    from test_classifier import _toy_samples

    train, val = split_by_study(_toy_samples(), 0.25, seed=0)
    with pytest.raises(RadiomicsInputsMissing, match="no radiomics features"):
        train_classifier(train, val, 2, ClassifierConfig(mode="radiomics"))
    assert ClassifierConfig(mode="radiomics").needs_radiomics and not ClassifierConfig(mode="features").needs_radiomics
    assert first_order_columns(feature_names())  # the one-feature baseline has columns to choose from


def test_lesion_regions_place_each_component_where_the_volume_has_it():
    from scipy import ndimage

    from radcascade.classifier import lesion_regions

    label = np.zeros((30, 30, 12), bool)
    label[3:8, 4:9, 2:5] = True
    label[20:26, 18:21, 6:10] = True
    crop = label[2:28, 3:25, 1:11]
    components, n = ndimage.label(crop)
    regions = lesion_regions(components, [2, 1], (1.0, 2.0, 3.0), offset=(2, 3, 1))
    for r in regions:
        placed = np.zeros_like(label)
        placed[tuple(slice(o, o + n) for o, n in zip(r.offset, r.mask.shape))] = r.mask
        assert (placed & label).sum() == r.mask.sum()
        c = np.argwhere(placed).mean(0)
        np.testing.assert_allclose(r.geometry.centre_vox, c)
    assert regions[0].geometry.extent_mm == (6.0, 6.0, 12.0)  # component 2: 6 x 3 x 4 voxels
