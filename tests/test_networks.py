"""What a model file records about its network: the architecture (MONAI's UNet, committed, or nnU-Net's
residual encoder with deep supervision, ``resenc``) and the CT window of its input; what each returns,
how it trains, and that serving and retraining follow the file."""

import pytest
import torch

from radcascade.checkpoints import read_checkpoint
from radcascade.distributed import BatchDiceCELoss
from radcascade.labels import LabelContract
from radcascade.networks import FULLRES_LESION_UNET, LESION_UNET, RESENC_LESION_UNET, TINY_UNET, UNetSpec
from radcascade.training import LESION_NETWORKS, TrainConfig, Trainer, cases_from_folder, supervised_loss
from radcascade.volumes import load_volume

TINY_RESENC = UNetSpec(channels=(4, 8, 16), strides=(1, 2, 2), num_res_units=0, dropout=0.1,
                       architecture="resenc", deep_supervision=1)


def test_a_checkpoint_written_before_architectures_existed_reads_as_unet():
    old = {k: v for k, v in LESION_UNET.to_dict().items() if k not in ("architecture", "deep_supervision")}
    assert UNetSpec.from_dict(old) == LESION_UNET and LESION_UNET.architecture == "unet"
    assert UNetSpec.from_dict(RESENC_LESION_UNET.to_dict()) == RESENC_LESION_UNET
    assert RESENC_LESION_UNET.divisor == 16  # the served window and the training patch are multiples of it


@pytest.mark.parametrize("bad", [
    dict(architecture="vnet"),
    dict(channels=(4, 8, 16), strides=(2, 2), architecture="resenc"),  # resenc: one stride per level
    dict(channels=(4, 8, 16), strides=(1, 2, 2)),  # unet: one stride per down-sampling
    dict(channels=(4, 8, 16), strides=(2, 2), deep_supervision=1),  # unet has no deep supervision
    dict(channels=(4, 8, 16), strides=(1, 2, 2), architecture="resenc", deep_supervision=2),  # too many heads
])
def test_inconsistent_specs_are_refused(bad):
    with pytest.raises(ValueError):
        UNetSpec(**bad)


def test_fullres_unet_keeps_full_resolution_in_its_first_level():
    """``unet-fullres`` (the committed lesion network) is the UNet with a stride-1 first level: its first
    features have the input's size (the earlier ``unet`` halves it), and it returns one output of the input's size."""
    assert LESION_NETWORKS["unet-fullres"] == FULLRES_LESION_UNET and FULLRES_LESION_UNET.divisor == LESION_UNET.divisor
    x = torch.randn(1, 1, 32, 32, 16)
    for spec, first_size in ((FULLRES_LESION_UNET, (32, 32, 16)), (LESION_UNET, (16, 16, 8))):
        net = spec.build().eval()
        seen = []
        first = net.model[0]  # MONAI UNet: the first down-sampling block
        first.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape[2:])))
        with torch.no_grad():
            assert net(x).shape == (1, 2, 32, 32, 16)
        assert seen == [first_size]


def test_resenc_returns_its_heads_in_training_and_one_output_when_served():
    net = TINY_RESENC.build()
    x = torch.randn(2, 1, 32, 32, 16)
    net.train()
    heads = net(x)
    assert heads.shape == (2, 2, 2, 32, 32, 16)  # batch, main + 1 deep-supervision head, classes, space
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 2, 32, 32, 16)
    assert any(isinstance(m, torch.nn.Dropout) for m in net.modules())  # MC-dropout uncertainty still works


def test_deep_supervision_loss_weights_halve_per_coarser_head():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 16, 16, 8) > 0.8).float()
    main, coarse = torch.randn(2, 2, 16, 16, 8), torch.randn(2, 2, 16, 16, 8)
    loss = BatchDiceCELoss()
    assert torch.allclose(supervised_loss(loss, main, target), loss(main, target))  # one output: the plain loss
    stacked = torch.stack([main, coarse], dim=1)
    expected = (2 / 3) * loss(main, target) + (1 / 3) * loss(coarse, target)
    assert torch.allclose(supervised_loss(loss, stacked, target), expected)


def test_resenc_trains_publishes_serves_and_is_retrained_as_published(tiny_studies, tmp_path):
    """A resenc lesion model trains with deep supervision, is served by the cascade, and a later
    retraining that names no network (the server's train task) warm-starts the published resenc."""
    from conftest import PRETRAINED
    from radcascade.cascade import Cascade

    contract = LabelContract()
    cases = cases_from_folder(tiny_studies.folder)
    model = tmp_path / "lesion.pt"
    cfg = TrainConfig(stage="lesion", max_epochs=2, spec=TINY_RESENC, patch_size=(32, 32, 16), samples_per_volume=1)
    result = Trainer(cfg, contract, model).fit(cases)
    assert result.status == "DONE" and result.published and all(loss > 0 for loss in result.train_loss)
    assert read_checkpoint(model).spec == TINY_RESENC

    served = Cascade(contract, PRETRAINED / "organ.pt", model, torch.device("cpu"))
    volume = load_volume(cases[0].image)
    answer = served.run(volume)
    assert answer.organ_found and answer.label.shape == volume.shape

    again = Trainer(TrainConfig(stage="lesion", max_epochs=1, patch_size=(32, 32, 16), samples_per_volume=1),
                    contract, model)
    assert again.cfg.spec == TINY_RESENC
    assert again.fit(cases).warm_started
    # with nothing published (or warm start off) the stage's default network is trained
    fresh = Trainer(TrainConfig(stage="lesion", warm_start=False), contract, model)
    assert fresh.cfg.spec == FULLRES_LESION_UNET
    assert Trainer(TrainConfig(stage="lesion"), contract, tmp_path / "none.pt").cfg.spec == FULLRES_LESION_UNET
    assert Trainer(TrainConfig(stage="lesion", spec=TINY_UNET), contract, model).cfg.spec == TINY_UNET


def test_ct_window_is_recorded_checked_and_followed(tiny_studies, tmp_path):
    """A model file records its CT window (older files read as the default one); the served stage windows
    its input with the file's window; a retraining that names none keeps the published window and
    warm-starts, one that names another window trains cold."""
    from radcascade.checkpoints import Checkpoint, CheckpointError, parse_checkpoint, publish_checkpoint
    from radcascade.preprocessing import HU_WINDOW, LESION_HU_WINDOW, BoundingBox, valid_window
    from radcascade.stages import LESION

    ckpt = Checkpoint(TINY_UNET, TINY_UNET.build().state_dict(), (2.5, 2.5, 4.0), {}, (-50.0, 200.0))
    publish_checkpoint(ckpt, tmp_path / "w.pt")
    assert read_checkpoint(tmp_path / "w.pt").hu_window == (-50.0, 200.0)
    body = torch.load(tmp_path / "w.pt", weights_only=True)
    del body["hu_window"]
    torch.save(body, tmp_path / "old.pt")
    assert read_checkpoint(tmp_path / "old.pt").hu_window == HU_WINDOW
    body["hu_window"] = [200.0, -50.0]
    torch.save(body, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError):
        parse_checkpoint((tmp_path / "bad.pt").read_bytes(), tmp_path / "bad.pt")
    with pytest.raises(ValueError):
        valid_window((0.0, float("nan")))

    hu = torch.tensor([-100.0, -50.0, 75.0, 200.0, 400.0]).reshape(1, 5, 1, 1)
    box = BoundingBox((0, 0, 0), (5, 1, 1))
    narrow = LESION.prepare(hu, (2.5, 2.5, 4.0), box, (2.5, 2.5, 4.0), (-50.0, 200.0)).flatten().tolist()
    assert narrow == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    wide = LESION.prepare(hu, (2.5, 2.5, 4.0), box, (2.5, 2.5, 4.0), HU_WINDOW).flatten().tolist()
    assert wide == pytest.approx([(v + 250) / 600 for v in (-100.0, -50.0, 75.0, 200.0, 350.0)])
    # no window given: the stage's own, which for a new lesion network is the narrow one
    assert LESION.window == LESION_HU_WINDOW
    assert LESION.prepare(hu, (2.5, 2.5, 4.0), box, (2.5, 2.5, 4.0)).flatten().tolist() == pytest.approx(
        [(min(max(v, -50.0), 200.0) + 50) / 250 for v in hu.flatten().tolist()])

    contract = LabelContract()
    cases = cases_from_folder(tiny_studies.folder)
    model = tmp_path / "lesion.pt"
    small = dict(stage="lesion", max_epochs=1, spec=TINY_UNET, patch_size=(32, 32, 16), samples_per_volume=1)
    Trainer(TrainConfig(**small, hu_window=(-50, 200)), contract, model).fit(cases)
    assert read_checkpoint(model).hu_window == (-50.0, 200.0)
    again = Trainer(TrainConfig(**small), contract, model)
    assert again.cfg.hu_window == (-50.0, 200.0) and again.fit(cases).warm_started
    other = Trainer(TrainConfig(**small, hu_window=(-250, 350)), contract, model)
    assert not other.fit(cases).warm_started and read_checkpoint(model).hu_window == (-250.0, 350.0)
