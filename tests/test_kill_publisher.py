"""A publisher killed with SIGKILL at any moment leaves the previous model whole and loadable.

A real process republishes a ~19 MB model file in a loop with the project's publishing code (the
same call the training subprocess makes at the end of a run), so a kill lands mid-write almost
every time; after each kill the published file must load and be one of the complete versions.
"""

from __future__ import annotations

import os
import random
import signal
import time

import torch

from radcascade.checkpoints import Checkpoint, WarmModel, publish_checkpoint, read_checkpoint
from radcascade.files import TMP_DIR_NAME, remove_stale_temporaries
from radcascade.networks import UNetSpec

SPEC = UNetSpec(channels=(32, 64, 128, 256), strides=(2, 2, 2), num_res_units=2, dropout=0.0)


def _start_publisher(path, state) -> tuple[int, int]:
    """Fork a process (imports already done, so it starts at once) that republishes ``path`` in a
    loop with the project's publishing code; returns its pid and a pipe that gets a byte per file."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(read_fd)
            version = 0
            while True:
                version += 1
                publish_checkpoint(Checkpoint(SPEC, state, (5.0, 5.0, 8.0), {"version": version}), path)
                os.write(write_fd, b".")
        finally:
            os._exit(1)
    os.close(write_fd)
    return pid, read_fd


def test_sigkill_at_any_moment_keeps_a_whole_model(tmp_path):
    model = tmp_path / "organ.pt"
    rng = random.Random(0)
    seen_versions: list[int] = []
    leftovers_seen = 0
    state = SPEC.build().state_dict()
    for _ in range(8):
        pid, progress = _start_publisher(model, state)
        assert os.read(progress, 1) == b"."  # publishing is under way (a whole model exists)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(progress)
        ckpt = read_checkpoint(model)  # raises if the published file were partial
        seen_versions.append(int(ckpt.summary["version"]))
        warm = WarmModel(model, device=torch.device("cpu"))
        assert warm.get() is not None and warm.problem is None
        leftovers = list((tmp_path / TMP_DIR_NAME).glob("*"))
        leftovers_seen += len(leftovers)
        assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["organ.pt"]
    assert all(v >= 1 for v in seen_versions)
    # Kills mid-write leave hidden temporaries; start-up clean-up removes them once stale.
    assert leftovers_seen >= 1, "no kill landed mid-write; make the model file bigger"
    for f in (tmp_path / TMP_DIR_NAME).glob("*"):
        os.utime(f, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temporaries(tmp_path) >= 1
    assert not list((tmp_path / TMP_DIR_NAME).glob("*"))
