import hashlib
import json

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from radcascade.sample_data import BENIGN, MALIGNANT, generate_datastore, generate_study

SHAPE, SPACING = (96, 96, 40), (3.3, 3.3, 4.8)


def test_generation_is_deterministic(tmp_path):
    a = generate_study(123, "a", SHAPE, SPACING)
    b = generate_study(123, "b", SHAPE, SPACING)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    c = generate_study(124, "c", SHAPE, SPACING)
    assert not np.array_equal(a.image, c.image)


def test_datastore_layout_and_label_values(tmp_path):
    generate_datastore(tmp_path, labelled=2, unlabelled=1, seed=3, shape=SHAPE, spacing=SPACING)
    images = sorted(p.name for p in tmp_path.glob("*.nii.gz"))
    labels = sorted(p.name for p in (tmp_path / "labels" / "final").glob("*.nii.gz"))
    assert images == ["study_000.nii.gz", "study_001.nii.gz", "study_002.nii.gz"]
    assert labels == images[:2]
    img = sitk.ReadImage(str(tmp_path / images[0]))
    assert np.allclose(img.GetSpacing(), SPACING) and img.GetSize() == SHAPE
    arr = sitk.GetArrayFromImage(img)
    assert arr.min() >= -1024 and arr.max() <= 3071 and (arr == -1000).mean() > 0.1  # air around the body
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels" / "final" / labels[0])))
    assert set(np.unique(lab)) <= {0, 1, 2, 3} and (lab == 1).sum() > 1000
    # identical bytes when regenerated: the committed sample set is reproducible
    again = tmp_path / "again"
    generate_datastore(again, labelled=2, unlabelled=1, seed=3, shape=SHAPE, spacing=SPACING)
    digest = lambda p: hashlib.sha256(sitk.GetArrayFromImage(sitk.ReadImage(str(p))).tobytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / images[1]) == digest(again / images[1])


def test_lesion_free_studies_keep_their_anatomy(tmp_path):
    """A screening worklist: chosen studies have no lesion, the same organ, and the others are unchanged."""
    plain = generate_datastore(tmp_path / "plain", 3, 0, seed=11, shape=SHAPE, spacing=SPACING)
    screen = generate_datastore(tmp_path / "screen", 3, 0, seed=11, shape=SHAPE, spacing=SPACING,
                                lesion_free=frozenset({1}))
    assert (plain[1].label >= 2).any()  # this seed draws lesions for study 1
    assert not (screen[1].label >= 2).any() and not screen[1].lesions
    np.testing.assert_array_equal(screen[1].label >= 1, plain[1].label >= 1)  # the same organ
    for i in (0, 2):
        np.testing.assert_array_equal(screen[i].label, plain[i].label)
        np.testing.assert_array_equal(screen[i].image, plain[i].image)


def test_low_dose_studies_keep_anatomy_and_lesions_with_more_noise(tmp_path):
    """A second protocol: the same organ and lesions, noisier images; the truth manifest says which."""
    plain = generate_datastore(tmp_path / "plain", 2, 0, seed=11, shape=SHAPE, spacing=SPACING)
    mixed = generate_datastore(tmp_path / "mixed", 2, 0, seed=11, shape=SHAPE, spacing=SPACING,
                               low_dose=frozenset({1}))
    np.testing.assert_array_equal(mixed[1].label, plain[1].label)
    np.testing.assert_array_equal(mixed[0].image, plain[0].image)
    organ = plain[1].label == 1
    spread = lambda s: float(np.std(s.image[organ].astype(np.float32)))  # noqa: E731
    assert spread(mixed[1]) > 1.8 * spread(plain[1])
    truth = json.loads((tmp_path / "mixed" / "truth.json").read_text())["studies"]
    assert [truth[s.name]["protocol"] for s in mixed] == ["standard", "low-dose"]


def _lesion_features(n_studies=24):
    """Per lesion: class, mean HU, HU std inside, rim-minus-core HU, compactness."""
    rows = []
    for seed in range(n_studies):
        s = generate_study(1000 + seed, "x")  # the sample set's resolution
        comps, n = ndimage.label(s.label >= 2)
        for k in range(1, n + 1):
            m = comps == k
            if m.sum() < 20:
                continue
            cls = int(s.label[m].max()) - 2
            inner = ndimage.binary_erosion(m, iterations=1)
            core = ndimage.binary_erosion(m, iterations=2)
            if core.sum() < 5:
                continue
            rim = m & ~core
            surface = (m & ~inner).sum()
            compact = m.sum() ** (2 / 3) / max(surface, 1)
            hu = s.image.astype(float)
            rows.append((cls, hu[m].mean(), hu[core].std(), hu[rim].mean() - hu[core].mean(), compact))
    return np.array(rows)


def test_lesion_classes_differ_in_appearance_not_in_one_threshold():
    f = _lesion_features()
    benign, malignant = f[f[:, 0] == BENIGN], f[f[:, 0] == MALIGNANT]
    assert len(benign) >= 5 and len(malignant) >= 5
    # malignant: heterogeneous core and enhancing rim; benign: homogeneous
    assert np.median(malignant[:, 2]) > np.median(benign[:, 2])
    assert np.median(malignant[:, 3]) > np.median(benign[:, 3]) + 10
    # ... but mean density alone does not separate them
    best = 0.0
    labels = f[:, 0] == MALIGNANT
    for t in np.unique(f[:, 1]):
        acc = max(((f[:, 1] > t) == labels).mean(), ((f[:, 1] <= t) == labels).mean())
        best = max(best, acc)
    assert best < 0.95, f"mean HU alone separates the classes ({best:.2f})"


def _radiomics_table(family: str, n_studies: int, cfg):
    """Per lesion of ``n_studies`` generated studies of ``family``: (class, study, features)."""
    from radcascade.classifier import lesion_components
    from radcascade.radiomics import feature_names, lesion_features

    classes, studies, rows = [], [], []
    for seed in range(n_studies):
        s = generate_study(2000 + seed, "x", family=family)
        for sl, region, value in lesion_components(s.label):
            if region.sum() < 3:
                continue
            f = lesion_features(s.image.astype(np.float32), s.spacing, region, tuple(x.start for x in sl), cfg)
            classes.append(value - 2)
            studies.append(seed)
            rows.append(f.values)
    return np.array(classes), np.array(studies), np.array(rows), feature_names(cfg)


def test_matched_family_defeats_every_first_order_feature_but_not_shape_and_texture():
    """The harder family: no single first-order feature (mean, percentiles, std, max, ...) reaches
    AUC 0.70, while the classes still differ in shape, margin and texture."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from radcascade.radiomics import RadiomicsConfig, first_order_columns

    y, groups, X, names = _radiomics_table("matched", 24, RadiomicsConfig(classes=("firstorder", "shape", "glcm")))
    assert min(np.bincount(y)) >= 15
    first = first_order_columns(names)
    # (pyradiomics reports the variance, which ranks lesions as the std does)
    assert {"firstorder_Mean", "firstorder_90Percentile", "firstorder_Maximum", "firstorder_Variance"} \
        <= {names[j] for j in first}
    for j in first:
        ok = np.isfinite(X[:, j])
        auc = roc_auc_score(y[ok], X[ok, j])
        assert max(auc, 1 - auc) <= 0.70, f"{names[j]} separates the classes (AUC {max(auc, 1 - auc):.2f})"
    rest = [j for j in range(len(names)) if j not in first]
    Z = np.nan_to_num(X[:, rest])
    probs = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)), Z, y,
                              groups=groups, cv=GroupKFold(4), method="predict_proba")[:, 1]
    assert roc_auc_score(y, probs) > 0.65  # shape and texture still tell them apart


def test_default_family_is_separated_by_intensity_alone():
    """Why the second family exists: in the default family the rim lifts malignant upper percentiles."""
    from radcascade.radiomics import RadiomicsConfig, best_single_feature

    y, _, X, names = _radiomics_table("default", 12, RadiomicsConfig(classes=("firstorder",)))
    assert best_single_feature(X, y, names).train_auc > 0.85


def test_organ_scale_and_lesion_count_make_a_large_organ_with_many_lesions(tmp_path):
    """The large-organ CT of the latency benchmark: same generator, a bigger organ, a lesion-count range."""
    base = generate_study(123, "a", SHAPE, SPACING)
    same = generate_study(123, "a", SHAPE, SPACING, organ_scale=1.0, min_lesions=0)
    np.testing.assert_array_equal(base.image, same.image)  # the defaults change nothing
    big = generate_study(123, "b", SHAPE, SPACING, max_lesions=12, organ_scale=1.3, min_lesions=10)
    assert (big.label >= 1).sum() > 1.5 * (base.label >= 1).sum()
    assert 10 <= len(big.lesions) <= 12 and (big.label >= 2).any()
    generate_datastore(tmp_path, 1, 0, seed=3, shape=SHAPE, spacing=SPACING, organ_scale=1.3, lesions=(8, 9))
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["organ_scale"] == 1.3 and truth["lesions"] == [8, 9]
    assert 8 <= len(truth["studies"]["study_000"]["lesions"]) <= 9



def test_lesion_diameter_range_and_class_mix_keep_the_anatomy(tmp_path):
    """Training on the lesions the lesion stage misses (--lesion-diameter, --malignant-fraction): the same random numbers are
    drawn, so the organ is the same and only the lesions' sizes change; a bad range is refused."""
    import pytest

    base = generate_study(321, "a", SHAPE, SPACING, max_lesions=9, min_lesions=6)
    small = generate_study(321, "a", SHAPE, SPACING, max_lesions=9, min_lesions=6, lesion_diameter_mm=(8.0, 16.0))
    np.testing.assert_array_equal(base.label >= 1, small.label >= 1)  # the same organ
    assert small.lesions and all(8.0 <= l.diameter_mm <= 16.0 for l in small.lesions)
    assert max(l.diameter_mm for l in base.lesions) > 16.0  # the default range draws larger ones from this seed
    default = generate_study(321, "a", SHAPE, SPACING, max_lesions=9, min_lesions=6, lesion_diameter_mm=(6.0, 40.0))
    np.testing.assert_array_equal(base.image, default.image)  # the default range is the committed one
    with pytest.raises(ValueError, match="diameter"):
        generate_study(321, "a", SHAPE, SPACING, lesion_diameter_mm=(20.0, 10.0))
    # the class mix: all malignant or all benign on request, the organ unchanged
    for fraction, cls in ((1.0, MALIGNANT), (0.0, BENIGN)):
        mixed = generate_study(321, "a", SHAPE, SPACING, max_lesions=9, min_lesions=6, malignant_fraction=fraction)
        np.testing.assert_array_equal(base.label >= 1, mixed.label >= 1)
        assert mixed.lesions and all(l.lesion_class == cls for l in mixed.lesions)
    with pytest.raises(ValueError, match="malignant"):
        generate_study(321, "a", SHAPE, SPACING, malignant_fraction=1.5)
    with pytest.raises(ValueError, match="diameter"):  # refused before anything is written
        generate_datastore(tmp_path / "bad", 1, 0, seed=3, shape=SHAPE, spacing=SPACING, lesion_diameter_mm=(0, 16))
    assert not (tmp_path / "bad").exists()
    from radcascade.sample_data import main as sample_data_main
    with pytest.raises(SystemExit):  # the command says what is wrong, and writes nothing either
        sample_data_main(["--out", str(tmp_path / "bad"), "--malignant-fraction", "2"])
    assert not (tmp_path / "bad").exists()
    generate_datastore(tmp_path, 1, 0, seed=3, shape=SHAPE, spacing=SPACING, lesions=(4, 6), lesion_diameter_mm=(8, 16))
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["lesion_diameter_mm"] == [8.0, 16.0]
    assert all(8.0 <= l["diameter_mm"] <= 16.0 for l in truth["studies"]["study_000"]["lesions"])


def test_protocol_mix_marks_every_nth_study_low_dose_and_lesion_free(tmp_path):
    """The training CLI (--low-dose-every / --lesion-free-every) and the held-out evaluation draw their
    protocols with this one function."""
    from radcascade.sample_data import protocol_mix

    low_dose, lesion_free = protocol_mix(10, 4, 8)
    assert low_dose == {0, 4, 8} and lesion_free == {1, 9}
    assert protocol_mix(5) == (frozenset(), frozenset())
    low_dose, lesion_free = protocol_mix(3, 2, 2)
    studies = generate_datastore(tmp_path, 3, 0, seed=7, low_dose=low_dose, lesion_free=lesion_free, shape=SHAPE,
                                 spacing=SPACING)
    manifest = json.loads((tmp_path / "truth.json").read_text())["studies"]
    assert [manifest[s.name]["protocol"] for s in studies] == ["low-dose", "standard", "low-dose"]
    assert manifest[studies[1].name]["lesions"] == []
