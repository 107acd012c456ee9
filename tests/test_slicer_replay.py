"""3D Slicer's MONAI Label module, replayed call for call against the real server (see slicer_replay.py).

Two projects, as users start them: the committed sample data (8 labelled studies), and a new
project with 2 labelled studies trained with ``val_split`` 0 (no validation set: the case that froze
the module's panel).  Any step that would raise in the module or show a wrong state fails the test.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel.client.client import MONAILabelClientException
from scipy import ndimage

from conftest import StudySet, copy_weights, make_studies, start_server, stop_server
from slicer_replay import SlicerModule

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[1]
ORGAN, BENIGN, MALIGNANT = "liver", "lesion benign", "lesion malignant"


def _sample_project(folder: Path) -> StudySet:
    src = REPO / "sample-data" / "abdomen"
    (folder / "labels" / "final").mkdir(parents=True)
    for f in src.glob("*.nii.gz"):
        shutil.copy(f, folder / f.name)
    for f in (src / "labels" / "final").glob("*.nii.gz"):
        shutil.copy(f, folder / "labels" / "final" / f.name)
    names = sorted(f.name[:-7] for f in src.glob("*.nii.gz"))
    labelled = sorted(f.name[:-7] for f in (src / "labels" / "final").glob("*.nii.gz"))
    return StudySet(folder, [], labelled, [n for n in names if n not in labelled])


def _server(tmp_path, studies: StudySet, empty_model_dir: bool = False):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    if not empty_model_dir:
        copy_weights(model_dir)  # as `make serve` on a fresh clone: the app installs the starting stats itself
    return start_server(studies, model_dir, tmp_path / "server.log", {"classifier_epochs": "1"})


def _move_largest_lesion(module: SlicerModule) -> tuple[np.ndarray, str]:
    """The radiologist moves the largest lesion to the other class segment."""
    for src, dst in ((BENIGN, MALIGNANT), (MALIGNANT, BENIGN)):
        components, n = ndimage.label(module.segments[src])
        if n:
            sizes = ndimage.sum_labels(np.ones_like(components), components, np.arange(1, n + 1))
            lesion = components == int(np.argmax(sizes)) + 1
            module.segments[src] = module.segments[src] & ~lesion
            module.segments[dst] = module.segments[dst] | lesion
            return lesion, dst
    raise AssertionError("the cascade found no lesion to correct")


@pytest.fixture
def sample_server(tmp_path):
    server = _server(tmp_path, _sample_project(tmp_path / "studies"))
    yield server
    stop_server(server)


def test_slicer_session_on_the_sample_data(sample_server, tmp_path):
    module = SlicerModule(sample_server.url, tmp_path)
    module.fetch_info()
    # The starting weights come with the statistics they were trained with; the organ's is shown first.
    assert next(iter(module.info["train_stats"])) == "organ"
    assert module.update_gui() == f"{module.info['train_details']['organ']['best_metric']:.4f}" != "0.0000"
    assert list(module.info["models"])[0] == "cascade"
    for config in module.info["trainers"]["classifier"]["config"].values():
        assert not isinstance(config, list) or len(config) >= 2  # mode / backbone / classical: drop-downs
    assert "device" not in module.info["models"]["cascade"].get("config", {})

    # Next sample with every strategy: the cascade result is on screen even with auto-run off.
    for strategy in module.info["strategies"]:
        sample = module.next_sample(strategy)
        assert sample["id"] in sample_server.studies.unlabelled
        assert sample["shown_original"], f"{strategy}: nothing shown on Next sample"
        assert module.segments[ORGAN].any()

    # Run every model the module lists.
    module.run_model("cascade")
    lesions = module.segments[BENIGN] | module.segments[MALIGNANT]
    assert lesions.any()
    edited_lesions = {k: module.segments[k].copy() for k in (BENIGN, MALIGNANT)}
    module.segments[BENIGN][tuple(s // 2 for s in module.shape())] = True  # a lesion edit
    edited_lesions[BENIGN] = module.segments[BENIGN].copy()
    module.run_model("organ")
    for name, mask in edited_lesions.items():  # re-running the organ keeps the lesion segments
        np.testing.assert_array_equal(module.segments[name], mask)
    organ = module.segments[ORGAN].copy()
    module.run_model("lesion", edits={"organ_from": "organ stage"})
    np.testing.assert_array_equal(module.segments[ORGAN], organ)  # re-running lesions keeps the organ
    result = module.run_model("classify")
    report = requests.get(sample_server.url + result["report"], timeout=30)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert len(rows) == result["lesion_count"] and {r["class"] for r in rows} <= {BENIGN, MALIGNANT}
    assert requests.get(f"{sample_server.url}/report/{sample_server.studies.labelled[0]}", timeout=30).status_code == 404
    with pytest.raises(MONAILabelClientException, match="422"):  # the device is the server's, not the request's
        module.client().infer("cascade", module.image_id, {"device": "cuda:7"})
    saliency = module.run_model("saliency")
    assert module.segments["attention high"].any() and len(saliency["peaks"]) == saliency["lesion_count"]
    for band in ("attention high", "attention medium"):  # the overlay is deleted before Submit
        del module.segments[band]

    # Correct: move a lesion to the other class, reorder segments, leave an empty default segment.
    module.run_model("cascade")
    moved, new_class = _move_largest_lesion(module)
    module.segments["Segment_4"] = np.zeros(module.shape(), bool)
    module.submit(order=[MALIGNANT, "Segment_4", ORGAN, BENIGN])
    final = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_server.studies.folder / "labels" / "final" /
                                                      f"{module.image_id}.nii.gz")))
    values = {ORGAN: 1, BENIGN: 2, MALIGNANT: 3}
    assert (final[moved] == values[new_class]).all(), "the submitted class must be stored by name"

    # classify after Submit: the radiologist's class stays; the classifier's opinion is reported.
    result = module.run_model("classify")
    assert module.segments[new_class][moved].all()
    assert all(l["drawn_class"] for l in result["lesions"])

    # lesion after Submit: the submitted organ is used and the organ segment is untouched.
    organ = module.segments[ORGAN].copy()
    result = module.run_model("lesion")
    assert any("submitted label" in n for n in result["notes"])
    np.testing.assert_array_equal(module.segments[ORGAN], organ)

    # Train every trainer with the Options panel's values (one epoch), polling like the module's timer.
    for trainer in module.info["trainers"]:
        views = module.train(trainer, edits={"max_epochs": "1"})
        running = [v for v in views if v.trainer is not None]
        assert running, f"{trainer}: the progress bar never saw the run"
        assert all(v.trainer == trainer for v in running), f"progress shows another trainer: {running}"
        assert all(1 <= v.percent <= 100 for v in views)
        first = next(iter(module.info["train_stats"]))
        assert first == trainer  # the accuracy bar shows what was just trained
    module.next_sample(next(iter(module.info["strategies"])))


@pytest.fixture
def new_project(tmp_path):
    studies = make_studies(tmp_path / "studies", labelled=2, unlabelled=2, seed=11)
    server = _server(tmp_path, studies)
    yield server
    stop_server(server)


def test_slicer_session_on_a_new_project_without_validation(new_project, tmp_path):
    # Slicer on another machine (e.g. through an SSH tunnel): it downloads the image under the answer's name
    module = SlicerModule(new_project.url, tmp_path, auto_run=True, remote=True)
    module.fetch_info()
    sample = module.next_sample(next(iter(module.info["strategies"])))
    assert sample["id"] and module.segments[ORGAN].any()  # auto-run: the cascade (answered from the stored copy)
    assert sample["name"] == f"{sample['id']}.nii.gz" and module.node_name == sample["id"]
    for trainer in ("organ", "lesion"):
        views = module.train(trainer, edits={"max_epochs": "1", "val_split": "0"})
        assert all(1 <= v.percent <= 100 for v in views)
        stats = module.info["train_stats"][trainer]
        assert stats["best_metric"] == 0.0 and "no validation" in stats["best_metric_note"]
        assert module.update_gui() == "0.0000"
    module.run_model("cascade")
    module.submit()
    assert module.fetch_info()["datastore"]["completed"] == 3
    assert module.next_sample(next(iter(module.info["strategies"])))["id"]
