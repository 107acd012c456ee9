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

    before = {m: (model_dir / f"{m}.pt").stat().st_mtime_ns for m in ("organ", "classifier")}
    server = start_server(tiny_studies, model_dir, tmp_path / "server.log")

    def train(model: str, options: dict) -> None:
        client.train_start(model, {"multi_gpu": True, "cpu_processes": 2, **options})
        deadline = time.time() + 300
        while time.time() < deadline:
            status = client.train_status(False)
            if status and status.get("status") not in ("SUBMITTED", "QUEUED", "RUNNING"):
                break
            time.sleep(1)
        assert status["status"] == "DONE", list(status.get("details", []))[-10:]
        assert (model_dir / f"{model}.pt").stat().st_mtime_ns != before[model]  # published

    try:
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
        train("organ", {"max_epochs": 1, "val_split": 0.34})
        details = client.info()["train_details"]["organ"]
        assert details["status"] == "DONE" and details["epochs_done"] == 1 and details["best_metric"] is not None
        assert "2 processes" in server.log.read_text()
        train("classifier", {"mode": "finetune", "depth": "0", "max_epochs": 1, "val_split": 0.34})
        details = client.info()["train_details"]["classifier"]
        assert details["status"] == "DONE" and details["world_size"] == 2 and details["mode"] == "finetune"
        assert "training the classifier on 3 labelled studies (2 processes)" in server.log.read_text()
    finally:
        stop_server(server)


def _classifier_rank(ctx: Distributed, train, cfg, out) -> None:
    from radcascade.classifier import train_classifier

    trained = train_classifier(train, [], 2, cfg)  # train_network finds the process group itself
    if ctx.main:
        torch.save(trained.net.state_dict(), out)


@pytest.mark.parametrize("depth", [0, 1])
def test_classifier_fine_tuning_on_two_processes_equals_one_with_the_global_batch(tmp_path, depth):
    """The head alone (depth 0) is exact (dropout off: each rank draws its own masks); with a trained
    block its batch norms see each rank's half of the batch on the CPU (synchronised only on CUDA),
    so the head is compared within a looser tolerance."""
    from dataclasses import replace

    from radcascade.classifier import ClassifierConfig, train_classifier
    from test_classifier import _toy_samples

    train = _toy_samples(n_studies=8, per_study=4)  # 32 views: 4 full global batches of 8
    cfg = ClassifierConfig(mode="finetune", depth=depth, epochs=2, batch_size=8, seed=0, dropout=0.0)
    one = train_classifier(train, [], 2, cfg).net.state_dict()
    spawn(2, _classifier_rank, train, replace(cfg, batch_size=4), tmp_path / "two.pt")
    two = torch.load(tmp_path / "two.pt")
    if depth == 0:
        for name, weight in one.items():
            assert torch.allclose(weight.float(), two[name].float(), rtol=1e-4, atol=1e-6), name
    else:  # the two networks classify the training views alike
        from radcascade.backbones import load_backbone
        from radcascade.classifier import LesionClassifierNet
        from radcascade.classifier.samples import stack_patches

        x, _ = stack_patches(train)
        classes = []
        for state in (one, two):
            net = LesionClassifierNet(load_backbone(cfg.backbone, cfg.weights, False), 2, 0.0)
            net.load_state_dict(state)
            classes.append(net.predict_proba(x).argmax(1))
        assert float((classes[0] == classes[1]).float().mean()) >= 0.9
