"""Shared fixtures: tiny generated studies, the committed starting weights, a real MONAI Label server."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from radcascade import localserver
from radcascade.cascade import MODEL_FILES
from radcascade.sample_data import Study, generate_datastore

APP_DIR = localserver.APP_DIR
PRETRAINED = Path(os.environ.get("RADCASCADE_TEST_WEIGHTS", APP_DIR / "pretrained"))
# Same anatomy in mm as the sample set, at coarser voxels so tests stay fast on 2 cores.
TINY_SHAPE = (80, 80, 32)
TINY_SPACING = (4.0, 4.0, 6.0)


@dataclass
class StudySet:
    folder: Path
    studies: list[Study]
    labelled: list[str]
    unlabelled: list[str]


def make_studies(folder: Path, labelled: int, unlabelled: int, seed: int = 7) -> StudySet:
    studies = generate_datastore(folder, labelled, unlabelled, seed=seed, shape=TINY_SHAPE, spacing=TINY_SPACING)
    names = [s.name for s in studies]
    return StudySet(folder, studies, names[:labelled], names[labelled:])


@pytest.fixture
def tiny_studies(tmp_path) -> StudySet:
    return make_studies(tmp_path / "studies", labelled=3, unlabelled=2)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A writable copy of the committed starting weights."""
    out = tmp_path / "model"
    out.mkdir()
    copy_weights(out)
    return out


def lesion_model_answering(path: Path, lesion_logit: float, spacing=None) -> Path:
    """The committed lesion network with its output pushed to lesion (+) or background (-) everywhere, published
    at ``path`` (on another grid with ``spacing``): a lesion model, or small-lesion detector, whose answer is known."""
    from dataclasses import replace

    from radcascade.checkpoints import publish_checkpoint, read_checkpoint

    ckpt = read_checkpoint(PRETRAINED / "lesion.pt")
    state = dict(ckpt.state_dict)
    bias = state["model.2.1.conv.unit0.conv.bias"].clone()
    bias[1] += lesion_logit
    state["model.2.1.conv.unit0.conv.bias"] = bias
    publish_checkpoint(replace(ckpt, state_dict=state, spacing=spacing or ckpt.spacing), path)
    return path


def copy_weights(target: Path) -> None:
    for f in MODEL_FILES:
        if (PRETRAINED / f).exists():  # the small-lesion detector is optional
            shutil.copy(PRETRAINED / f, target / f)


@dataclass
class Server:
    url: str
    studies: StudySet
    model_dir: Path
    process: object
    log: Path


def start_server(studies: StudySet, model_dir: Path, log: Path, extra_conf: dict | None = None,
                 env: dict | None = None) -> Server:
    # MLflow tracking is tested on its own (tests/test_tracking.py); creating its store costs seconds.
    conf = {"model_dir": str(model_dir), "max_epochs": "1", "tracking_uri": "off", **(extra_conf or {})}
    local = localserver.start_server(studies.folder, log, conf, env=env)
    return Server(local.url, studies, model_dir, local, log)


def stop_server(server: Server) -> None:
    server.process.stop()


@dataclass
class IsolatedServer:
    """A server with its own temp folder and home (so what it leaves there is measurable)."""

    server: Server
    tmp: Path
    home: Path


def start_isolated_server(root: Path, labelled: int, unlabelled: int, seed: int) -> IsolatedServer:
    """Generated studies, a copy of the starting weights, and a real server with TMPDIR and HOME under ``root``."""
    studies = make_studies(root / "studies", labelled=labelled, unlabelled=unlabelled, seed=seed)
    model_dir = root / "model"
    tmp, home = root / "server-tmp", root / "server-home"
    for folder in (model_dir, tmp, home):
        folder.mkdir()
    copy_weights(model_dir)
    server = start_server(studies, model_dir, root / "server.log", env={"TMPDIR": str(tmp), "HOME": str(home)})
    time.sleep(1)  # start-up writes (logging config, library caches) are not per request
    return IsolatedServer(server, tmp, home)
