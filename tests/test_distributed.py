"""Training on two processes (gloo on the CPU) equals one process with the same global batch."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from radcascade.checkpoints import read_checkpoint
from radcascade.distributed import BatchDiceCELoss, Distributed, spawn
from radcascade.labels import LabelContract
from radcascade.networks import TINY_UNET
from radcascade.training import TrainConfig, Trainer, cases_from_folder

CONTRACT = LabelContract()


def _config(batch_size: int) -> TrainConfig:
    return TrainConfig(stage="organ", max_epochs=1, spec=TINY_UNET, patch_size=(32, 32, 16), samples_per_volume=2,
                       batch_size=batch_size, val_fraction=0.0, warm_start=False, amp=False, seed=3)


def _train_rank(ctx: Distributed, cfg: TrainConfig, cases, model_path, die_on_rank: int | None = None) -> None:
    on_step = _die_at_second_step if die_on_rank == ctx.rank else None
    Trainer(cfg, CONTRACT, model_path, dist=ctx, on_step=on_step).fit(cases)


def _die_at_second_step(ctx: Distributed, epoch: int, step: int, loss: float) -> None:
    if step == 1:
        os._exit(3)  # a rank lost mid-epoch (killed, out of memory, machine down)


def test_batch_dice_ce_equals_monai():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8, 4, requires_grad=True)
    target = torch.randint(0, 2, (3, 1, 8, 8, 4)).float()
    ours = BatchDiceCELoss()(logits, target)
    monai = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, target)
    assert torch.allclose(ours, monai, atol=1e-6)


def test_two_processes_publish_the_weights_of_one_with_the_global_batch(tiny_studies, tmp_path):
    cases = cases_from_folder(tiny_studies.folder)  # 3 studies x 2 patches: 3 global batches of 2
    Trainer(_config(batch_size=2), CONTRACT, tmp_path / "one.pt").fit(cases)
    spawn(2, _train_rank, _config(batch_size=1), cases, tmp_path / "two.pt")
    one, two = read_checkpoint(tmp_path / "one.pt"), read_checkpoint(tmp_path / "two.pt")
    # The published networks compute the same function (tolerance 1e-4 on the probabilities). Weights
    # are compared where they matter: a convolution's bias feeding an instance norm has a gradient of
    # pure rounding noise (~1e-9) that Adam magnifies, but it cancels in the norm.
    for name, weight in one.state_dict.items():
        if not name.endswith("conv.bias"):
            assert torch.allclose(weight, two.state_dict[name], rtol=1e-3, atol=1e-5), name
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 32, 32, 16), dtype=np.float32))
    nets = []
    for ckpt in (one, two):
        net = ckpt.spec.build().eval()
        net.load_state_dict(ckpt.state_dict)
        nets.append(net)
    with torch.no_grad():
        assert torch.allclose(torch.softmax(nets[0](x), 1), torch.softmax(nets[1](x), 1), atol=1e-4)
    assert (tmp_path / "two.stats.json").exists() and not (tmp_path / ".tmp").exists()


def test_a_rank_lost_mid_epoch_fails_the_run_and_publishes_nothing(tiny_studies, tmp_path):
    cases = cases_from_folder(tiny_studies.folder)
    with pytest.raises(Exception):
        spawn(2, _train_rank, _config(batch_size=1), cases, tmp_path / "lost.pt", 1, timeout_s=30)
    assert not (tmp_path / "lost.pt").exists() and not list(tmp_path.glob(".lost.pt.*"))


@pytest.mark.server
def test_train_with_multi_gpu_through_the_server_on_two_cpu_processes(tiny_studies, model_dir, tmp_path):
    import time

    from monailabel.client import MONAILabelClient

    from conftest import start_server, stop_server

    before = (model_dir / "organ.pt").stat().st_mtime_ns
    server = start_server(tiny_studies, model_dir, tmp_path / "server.log")
    try:
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
        client.train_start("organ", {"max_epochs": 1, "multi_gpu": True, "cpu_processes": 2, "val_split": 0.34})
        deadline = time.time() + 300
        while time.time() < deadline:
            status = client.train_status(False)
            if status and status.get("status") not in ("SUBMITTED", "QUEUED", "RUNNING"):
                break
            time.sleep(1)
        assert status["status"] == "DONE", list(status.get("details", []))[-10:]
        assert (model_dir / "organ.pt").stat().st_mtime_ns != before  # published
        details = client.info()["train_details"]["organ"]
        assert details["status"] == "DONE" and details["epochs_done"] == 1 and details["best_metric"] is not None
        assert "2 processes" in server.log.read_text()
    finally:
        stop_server(server)
