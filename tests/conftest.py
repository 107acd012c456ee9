"""Shared fixtures: tiny generated studies, the committed starting weights, a real MONAI Label server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from radcascade.sample_data import Study, generate_datastore

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "apps" / "radcascade"
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
    for f in ("organ.pt", "lesion.pt"):
        shutil.copy(PRETRAINED / f, out / f)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    studies: StudySet
    model_dir: Path
    process: subprocess.Popen
    log: Path


def start_server(studies: StudySet, model_dir: Path, log: Path, extra_conf: dict | None = None) -> Server:
    port = free_port()
    env = {
        **os.environ,
        # `monailabel start_server` and the training subprocess run the `python` found on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "MONAI_LABEL_TRACKING_ENABLED": "false",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "PYTHONUNBUFFERED": "1",
    }
    conf = {"model_dir": str(model_dir), "max_epochs": "1", **(extra_conf or {})}
    cmd = [str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(APP_DIR),
           "--studies", str(studies.folder), "--host", "127.0.0.1", "--port", str(port)]
    for k, v in conf.items():
        cmd += ["--conf", k, v]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url + "/info/", timeout=5).status_code == 200:
                return Server(url, studies, model_dir, proc, log)
        except requests.RequestException:
            pass
        time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"server did not answer in time:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
