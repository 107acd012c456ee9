import numpy as np
import pytest
import torch

from radcascade.backbones import PretrainedWeightsUnavailable, load_backbone
from radcascade.checkpoints import WarmModel
from radcascade.classifier import (
    ClassifierConfig,
    LesionClassifierNet,
    LesionSample,
    load_classifier,
    predict_lesions,
    publish_classifier,
    split_by_study,
    train_classifier,
)
from radcascade.patches import IMAGENET_MEAN, IMAGENET_STD, LesionGeometry, PatchConfig, extract_patches

SMALL = PatchConfig(size=32, views=1)


def _unnormalise(p):
    return p * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def test_patch_is_centred_on_the_lesion_and_covers_it():
    vol = torch.full((60, 50, 30), 60.0)  # liver-like background
    spacing = (1.0, 1.2, 3.0)
    x, y, z = torch.meshgrid(torch.arange(60.0), torch.arange(50.0), torch.arange(30.0), indexing="ij")
    r = torch.sqrt(((x - 20) * spacing[0]) ** 2 + ((y - 30) * spacing[1]) ** 2 + ((z - 12) * spacing[2]) ** 2)
    vol[r <= 6] = -20.0  # a 12 mm hypodense lesion
    geom = LesionGeometry((20.0, 30.0, 12.0), (12.0, 12.0, 12.0))
    p = _unnormalise(extract_patches(vol, spacing, [geom], PatchConfig(size=32, views=1))[0, 0])
    for plane in p:  # axial, coronal, sagittal
        assert plane[14:18, 14:18].mean() < 0.2  # lesion in the centre (dark)
        assert plane[0:3, 0:3].mean() > 0.35 and plane[-3:, -3:].mean() > 0.35  # organ at the corners
        dark = (plane < 0.2).float()
        assert 0.2 < dark.mean() < 0.7  # the lesion fills the patch with context around it


def _toy_samples(n_studies=8, per_study=3, seed=0):
    """Two classes of 32x32 patches: dark round blobs vs bright rings (separable, like the generator's)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    r = torch.sqrt((yy - 15.5) ** 2 + (xx - 15.5) ** 2)
    out = []
    for s in range(n_studies):
        for k in range(per_study):
            label = (s + k) % 2
            img = torch.full((32, 32), 0.6) + 0.05 * torch.randn(32, 32, generator=g)
            if label == 0:
                img[r < 7] = 0.2
            else:
                img[r < 7] = 0.35 + 0.15 * torch.randn(int((r < 7).sum()), generator=g)
                img[(r >= 5) & (r < 8)] = 0.95
            rgb = ((img.expand(3, 32, 32) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1))
            out.append(LesionSample(f"study{s}", label, rgb.unsqueeze(0)))
    return out


def test_split_keeps_each_study_on_one_side():
    train, val = split_by_study(_toy_samples(), 0.25, seed=0)
    assert val and not {s.study for s in train} & {s.study for s in val}
    assert {s.label for s in val} == {0, 1}


@pytest.mark.parametrize("mode,extra", [
    ("features", {"classical": "logreg"}),
    ("features", {"classical": "svm"}),
    ("features", {"classical": "lda"}),
    ("scratch", {"epochs": 2, "scratch_epochs": 2}),
    ("finetune", {"depth": 1, "epochs": 2}),
])
def test_modes_fit_and_predict(mode, extra):
    train, val = split_by_study(_toy_samples(), 0.25, seed=0)
    trained = train_classifier(train, val, 2, ClassifierConfig(mode=mode, batch_size=8, **extra))
    x = torch.stack([s.patches for s in val])
    probs = trained.net.predict_proba(x)
    assert probs.shape == (len(val), 2) and torch.allclose(probs.sum(1), torch.ones(len(val)), atol=1e-5)
    assert trained.report.val_auc is not None
    if mode == "features":  # the frozen ImageNet features separate this toy task
        assert trained.report.val_auc > 0.9


def test_deep_features_head_equals_the_sklearn_classifier():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from radcascade.classifier import deep_features

    train, val = split_by_study(_toy_samples(), 0.25, seed=0)
    trained = train_classifier(train, val, 2, ClassifierConfig(mode="features"))
    f_train = deep_features(trained.net, train, torch.device("cpu"))
    scaler = StandardScaler().fit(f_train)
    ref = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000).fit(scaler.transform(f_train), [s.label for s in train])
    f_val = deep_features(trained.net, val, torch.device("cpu"))
    expected = ref.predict_proba(scaler.transform(f_val))
    got = trained.net.predict_proba(torch.stack([s.patches for s in val])).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_auto_chooses_by_cross_validation_and_records_every_candidate():
    train, val = split_by_study(_toy_samples(), 0.25, seed=0)
    cfg = ClassifierConfig(mode="auto", auto_families=("features", "finetune"), auto_depths=(0, 2), epochs=2,
                           batch_size=8, cv_folds=2, cv_repeats=1)
    trained = train_classifier(train, val, 2, cfg)
    r = trained.report
    assert set(r.candidates) == {"features", "finetune k=0", "finetune k=2"}
    assert all(len(c.fold_aucs) == 2 for c in r.candidates.values())
    assert set(r.depth_curve) == {0, 2} and r.mode == "auto"
    means = {k: (c.mean_auc if c.mean_auc is not None else -1) for k, c in r.candidates.items()}
    assert means[r.chosen] == max(means.values())  # the CV winner, not the best validation AUC
    assert r.family == r.chosen.split(" ")[0]
    assert r.depth == (int(r.chosen.split("=")[1]) if r.family == "finetune" else 0)


def test_layerwise_depth_freezes_lower_blocks():
    net = LesionClassifierNet(load_backbone("efficientnet-lite0", "imagenet"), 2)
    net.set_trainable_depth(2)
    trainable = [any(p.requires_grad for p in b.parameters()) for b in net._blocks]
    assert trainable == [False] * (net.n_blocks - 2) + [True, True]
    groups = net.param_groups(2, 1e-3, 0.5)
    assert [g["lr"] for g in groups] == [1e-3, 5e-4, 2.5e-4]
    net.train()
    assert not net._blocks[0][1].training  # frozen BN keeps ImageNet statistics


def test_published_classifier_reloads_identically(tmp_path):
    train, val = split_by_study(_toy_samples(), 0.25, seed=0)
    x = torch.stack([s.patches for s in val])
    for mode in ("features", "finetune"):
        trained = train_classifier(train, val, 2, ClassifierConfig(mode=mode, depth=1, epochs=1, batch_size=8))
        path = publish_classifier(trained, ("lesion benign", "lesion malignant"), SMALL, tmp_path / f"{mode}.pt")
        net, ckpt = load_classifier(path.read_bytes(), path, torch.device("cpu"))
        assert ckpt.stored == ("head" if mode == "features" else "full")
        torch.testing.assert_close(net.predict_proba(x), trained.net.predict_proba(x), atol=1e-5, rtol=1e-4)
        preds = predict_lesions(net, x)
        assert all(0 <= p.entropy <= 1 and p.view_disagreement >= 0 for p in preds)
    assert (tmp_path / "features.pt").stat().st_size < 100_000  # head only
    warm = WarmModel(tmp_path / "features.pt", torch.device("cpu"), loader=load_classifier)
    assert warm.get() is not None and "features" in warm.status()


def test_missing_pretrained_weights_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(PretrainedWeightsUnavailable, match="not in torch's cache"):
        load_backbone("resnet18", "imagenet")
    with pytest.raises(PretrainedWeightsUnavailable, match="does not exist"):
        load_backbone("resnet18", str(tmp_path / "missing.pth"))
    # without downloads, a random init is only ever what was asked for
    assert load_backbone("resnet18", None).pretrained is False


def test_scratch_gets_its_own_learning_rate_and_a_longer_budget():
    from radcascade.classifier import schedule_for

    cfg = ClassifierConfig(mode="scratch", epochs=10, patience=4, learning_rate=1e-3, scratch_learning_rate=3e-3)
    s, f = schedule_for(cfg, scratch=True), schedule_for(cfg)
    assert (s.learning_rate, s.layer_lr_decay, s.epochs, s.patience) == (3e-3, 1.0, 30, 8)  # every block at 3e-3
    assert (f.learning_rate, f.layer_lr_decay, f.epochs, f.patience) == (1e-3, 0.5, 10, 4)
    explicit = schedule_for(ClassifierConfig(scratch_epochs=50, scratch_patience=12), scratch=True)
    assert (explicit.epochs, explicit.patience) == (50, 12)
