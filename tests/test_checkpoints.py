import pytest
import torch

from radcascade import checkpoints
from radcascade.checkpoints import Checkpoint, CheckpointError, WarmModel, publish_checkpoint, read_checkpoint
from radcascade.networks import TINY_UNET


def _ckpt(seed: int) -> Checkpoint:
    torch.manual_seed(seed)
    return Checkpoint(TINY_UNET, TINY_UNET.build().state_dict(), (5.0, 5.0, 8.0), {"trained_at": f"seed{seed}"})


def test_publish_and_read_roundtrip(tmp_path):
    path = publish_checkpoint(_ckpt(0), tmp_path / "organ.pt")
    ck = read_checkpoint(path)
    assert ck.spec == TINY_UNET and ck.spacing == (5.0, 5.0, 8.0)
    assert [p.name for p in tmp_path.iterdir()] == ["organ.pt"]


@pytest.mark.parametrize("content", [b"", b"not a model", None])
def test_corrupt_or_truncated_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "m.pt"
    if content is None:
        data = publish_checkpoint(_ckpt(0), tmp_path / "full.pt").read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(path)


def test_failed_publish_keeps_previous_model(tmp_path, monkeypatch):
    path = publish_checkpoint(_ckpt(0), tmp_path / "m.pt")
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", broken_save)
    with pytest.raises(OSError):
        publish_checkpoint(_ckpt(1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_warm_model_loads_once_and_follows_republishing(tmp_path):
    path = tmp_path / "m.pt"
    warm = WarmModel(path, torch.device("cpu"))
    assert warm.get() is None and warm.status().startswith("UNTRAINED")
    publish_checkpoint(_ckpt(0), path)
    first = warm.get()
    assert first is not None and warm.get() is first  # no re-read while the file is unchanged
    publish_checkpoint(_ckpt(1), path)
    second = warm.get()
    assert second is not first and second.digest != first.digest
    # a corrupt file never replaces a good loaded model
    path.write_bytes(b"garbage")
    assert warm.get() is second
    assert "corrupt" in warm.status()


# -- one format for every model file ------------------------------------------------------------------
def test_every_model_file_carries_the_format_version_and_its_kind(tmp_path):
    path = publish_checkpoint(_ckpt(0), tmp_path / "organ.pt")
    payload = torch.load(path, weights_only=True)
    assert (payload["format"], payload["kind"]) == (checkpoints.FORMAT_VERSION, "unet")
    with pytest.raises(CheckpointError, match="holds a unet model, not a classifier model"):
        checkpoints.load_model_payload(path.read_bytes(), path, "classifier")


def test_legacy_unet_files_still_load(tmp_path):
    """Version 1 UNet files (integer format 1, no kind) are read as the UNets they are."""
    legacy = {"format": 1, **_ckpt(0).to_body()}
    path = tmp_path / "old.pt"
    torch.save(legacy, path)
    assert read_checkpoint(path).summary == {"trained_at": "seed0"}
    torch.save({**legacy, "format": "1"}, path)  # same value, other type: not a model file
    with pytest.raises(CheckpointError, match="not a radcascade model file"):
        read_checkpoint(path)


@pytest.mark.parametrize("name", ["organ.pt", "lesion.pt", "classifier.pt"])
def test_committed_model_files_load_through_the_one_reader(name):
    from radcascade.classifier import load_classifier
    from conftest import PRETRAINED

    path = PRETRAINED / name
    kind = checkpoints.model_file_kind(torch.load(path, map_location="cpu", weights_only=True))
    assert kind == ("classifier" if name == "classifier.pt" else "unet")
    if kind == "unet":
        assert read_checkpoint(path).summary
    else:
        net, ckpt = load_classifier(path.read_bytes(), path, torch.device("cpu"))
        assert ckpt.classes and not net.training
