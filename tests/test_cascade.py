import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import PRETRAINED, lesion_model_answering
from radcascade.cascade import Cascade
from radcascade.labels import LabelContract
from radcascade.preprocessing import BoundingBox, resample, sample_region
from radcascade.stages import SMALL_LESION_MODEL_FILE, StageUntrainedError
from radcascade.volumes import label_image_like, load_volume

CONTRACT = LabelContract()


@pytest.fixture(scope="module")
def cascade():
    return Cascade(CONTRACT, PRETRAINED / "organ.pt", PRETRAINED / "lesion.pt", torch.device("cpu"),
                   classifier_model=PRETRAINED / "classifier.pt")


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def test_cascade_output_follows_contract_and_finds_the_organ(cascade, tiny_studies):
    study = tiny_studies.studies[0]
    volume = load_volume(tiny_studies.folder / f"{study.name}.nii.gz")
    result = cascade.run(volume)
    assert result.label.shape == volume.shape and result.label.dtype == np.uint8
    assert set(np.unique(result.label)) <= {0, 1, 2, 3}
    assert result.organ_found
    assert _dice(result.label >= 1, study.label >= 1) > 0.8, "starting weights should segment the organ"
    js = result.to_json(CONTRACT)
    assert not js["provisional_classes"]
    for f in result.lesions:
        assert result.label[tuple(int(round(c)) for c in f.centroid_voxel)] in (1, f.value)
        assert f.value == CONTRACT.value_of(f.class_name) and set(f.probabilities) == set(CONTRACT.lesion_classes)
        assert f.volume_ml >= 0.02
    written = label_image_like(result.label, volume)
    assert written.GetSize() == sitk.ReadImage(str(tiny_studies.folder / f"{study.name}.nii.gz")).GetSize()


def test_without_classifier_lesions_are_provisional(tiny_studies):
    c = Cascade(CONTRACT, PRETRAINED / "organ.pt", PRETRAINED / "lesion.pt", torch.device("cpu"))
    result = c.run(load_volume(tiny_studies.folder / f"{tiny_studies.studies[0].name}.nii.gz"))
    assert set(np.unique(result.label)) <= {0, 1, 2}
    js = result.to_json(CONTRACT)
    assert js["provisional_classes"] and "provisional" in " ".join(js["notes"])


def test_lesions_found_on_the_sample_resolution(cascade):
    """On a study at the sample set's resolution the lesion stage finds the larger lesions."""
    from radcascade.sample_data import generate_study
    from radcascade.volumes import volume_from_image
    from radcascade.sample_data import _to_sitk

    hits = total = 0
    for seed in (11, 12, 13):
        study = generate_study(seed, "s")
        volume = volume_from_image(_to_sitk(study.image, study.spacing, study.origin))
        result = cascade.run(volume)
        for lesion in study.lesions:
            if lesion.diameter_mm < 15:
                continue
            total += 1
            idx = tuple(int(round(c / s + (n - 1) / 2)) for c, s, n in zip(lesion.centre_mm, study.spacing, study.image.shape))
            hits += int(result.label[idx] >= 2)
    assert total > 0 and hits / total >= 0.5, f"found {hits}/{total} lesions of >= 15 mm"


def test_untrained_stage_is_reported(tmp_path, tiny_studies):
    c = Cascade(CONTRACT, tmp_path / "none.pt", tmp_path / "none2.pt", torch.device("cpu"))
    volume = load_volume(tiny_studies.folder / f"{tiny_studies.studies[0].name}.nii.gz")
    with pytest.raises(StageUntrainedError, match="organ stage is untrained"):
        c.run(volume)


def test_region_sampling_equals_full_upsampling_then_crop():
    """The organ stage's fast path (sample only the box) matches the reference (upsample all, crop)."""
    torch.manual_seed(0)
    coarse = torch.rand(1, 13, 11, 7)
    full_shape = (52, 40, 23)
    box = BoundingBox((5, 3, 2), (40, 31, 20))
    reference = torch.nn.functional.interpolate(coarse[None], size=full_shape, mode="trilinear", align_corners=False)[0]
    fast = sample_region(coarse, full_shape, box)
    torch.testing.assert_close(fast, reference[(slice(None),) + box.slices], atol=1e-5, rtol=1e-5)


def test_resample_preserves_mean_when_downsampling():
    x = torch.rand(1, 64, 64, 30)
    y = resample(x, (16, 16, 10))
    assert y.shape == (1, 16, 16, 10)
    assert abs(float(y.mean()) - float(x.mean())) < 1e-3


def test_sliding_window_matches_direct_forward():
    """Guards the monai 1.5.2 + torch 2.14 pairing: sliding-window output over one window equals a forward."""
    from monai.inferers import sliding_window_inference

    from radcascade.networks import TINY_UNET

    torch.manual_seed(0)
    net = TINY_UNET.build().eval()
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        direct = net(x)
        windowed = sliding_window_inference(x, (32, 32, 16), 1, net, overlap=0.25)
        tiled = sliding_window_inference(torch.cat([x, x], dim=4), (32, 32, 16), 2, net, overlap=0.0)
    torch.testing.assert_close(windowed, direct)
    torch.testing.assert_close(tiled[..., :16], direct)


def _study_with_lesions(tiny_studies):
    for study in tiny_studies.studies:
        if len(study.lesions) >= 1 and (study.label >= 2).any():
            return study, load_volume(tiny_studies.folder / f"{study.name}.nii.gz")
    pytest.skip("no generated study with a lesion")


def test_relabel_keeps_drawn_classes_and_reports_the_classifier(cascade, tiny_studies):
    study, volume = _study_with_lesions(tiny_studies)
    drawn = study.label.copy()
    flipped = np.where(drawn >= 2, 5 - drawn, drawn).astype(np.uint8)  # every lesion painted as the other class
    kept = cascade.relabel(volume, flipped, keep_drawn_classes=True)
    np.testing.assert_array_equal(kept.label, flipped)  # the radiologist's classes are never overwritten
    assert kept.lesions and all(f.drawn_class == f.class_name and f.model_class for f in kept.lesions)
    disagreements = [f for f in kept.lesions if f.model_class != f.drawn_class]
    assert len([n for n in kept.notes if "kept as drawn" in n]) == len(disagreements)

    replaced = cascade.relabel(volume, flipped, keep_drawn_classes=False)
    np.testing.assert_array_equal(replaced.label >= 2, flipped >= 2)  # outlines as drawn
    changed = [f for f in replaced.lesions if f.class_name != f.drawn_class]
    assert len([n for n in replaced.notes if "changed to" in n]) == len(changed)


def test_relabel_without_classifier_keeps_drawn_classes_or_refuses(tiny_studies):
    study, volume = _study_with_lesions(tiny_studies)
    bare = Cascade(CONTRACT, PRETRAINED / "organ.pt", PRETRAINED / "lesion.pt", torch.device("cpu"))
    result = bare.relabel(volume, study.label, keep_drawn_classes=True)
    np.testing.assert_array_equal(result.label, study.label)
    assert any("no trained classifier" in n for n in result.notes)
    with pytest.raises(StageUntrainedError):
        bare.relabel(volume, study.label, keep_drawn_classes=False)


def test_small_lesion_detector_adds_its_lesions_and_is_used_only_on_the_same_grid(tmp_path, tiny_studies, caplog):
    """The lesion probability is the larger of the lesion network's and the detector's: a detector that sees
    lesion everywhere turns the organ into lesion, one that sees none changes nothing, and one trained on
    another grid (it cannot share the input) or a missing file is not used."""
    volume = load_volume(tiny_studies.folder / f"{tiny_studies.studies[0].name}.nii.gz")

    def lesion_voxels(detector):
        c = Cascade(CONTRACT, PRETRAINED / "organ.pt", PRETRAINED / "lesion.pt", torch.device("cpu"),
                    small_lesion_model=detector, min_inside_organ=0.0)  # keep the organ-wide "lesion"
        result = c.run(volume)
        assert ("lesion_small" in c.models()) == (detector is not None and detector.exists())
        return result.label >= 2, result.label >= 1

    alone, organ = lesion_voxels(None)
    everywhere, _ = lesion_voxels(lesion_model_answering(tmp_path / "all.pt", 1000.0))
    assert everywhere.sum() >= organ.sum() > 2 * alone.sum() and (everywhere | ~alone).all()
    assert (lesion_voxels(lesion_model_answering(tmp_path / "none.pt", -1000.0))[0] == alone).all()
    with caplog.at_level(logging.WARNING, logger="radcascade.stages"):
        assert (lesion_voxels(lesion_model_answering(tmp_path / "grid.pt", 1000.0, spacing=(2.0, 2.0, 3.2)))[0] == alone).all()
    assert "small-lesion detector not used" in caplog.text
    assert (lesion_voxels(tmp_path / "missing.pt")[0] == alone).all()


def test_a_model_folder_brings_its_small_lesion_detector(tmp_path, tiny_studies):
    """``Cascade.in_folder`` (the benchmarks, the server's install) picks the detector up by its file name."""
    for f in ("organ.pt", "lesion.pt"):
        shutil.copy(PRETRAINED / f, tmp_path / f)
    assert set(Cascade.in_folder(CONTRACT, tmp_path, torch.device("cpu")).models()) == {"organ", "lesion"}
    lesion_model_answering(tmp_path / SMALL_LESION_MODEL_FILE, -1000.0)
    assert set(Cascade.in_folder(CONTRACT, tmp_path, torch.device("cpu")).models()) == {"organ", "lesion", "lesion_small"}
