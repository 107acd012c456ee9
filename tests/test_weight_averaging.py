"""Weight averaging: the mean of fine-tunes of one network, published as a model file the cascade serves."""

import pytest
import torch

from radcascade.checkpoints import Checkpoint, WarmModel, publish_checkpoint, read_checkpoint
from radcascade.networks import TINY_UNET
from radcascade.weight_averaging import average_checkpoints, main


def _fine_tune(seed: int, summary: dict, spacing=(2.5, 2.5, 4.0)) -> Checkpoint:
    torch.manual_seed(seed)
    return Checkpoint(TINY_UNET, TINY_UNET.build().state_dict(), spacing, summary, (-50.0, 200.0))


SHARED = {"stage": "lesion", "mirror_axes": [2], "min_inside_organ": 0.75}


def test_weights_are_the_mean_shared_choices_kept_and_differing_filters_left_out(tmp_path):
    a = _fine_tune(1, {**SHARED, "min_lesion_ml": 0.15, "best_dice": 0.87, "best_epoch": 24, "train_cases": ["x"]})
    b = _fine_tune(2, {**SHARED, "min_lesion_ml": 0.05, "best_dice": 0.85, "best_epoch": 20, "train_cases": ["y"]})
    paths = [publish_checkpoint(ck, tmp_path / f"{n}.pt") for n, ck in (("a", a), ("b", b))]

    main([str(p) for p in paths] + ["--out", str(tmp_path / "lesion.pt")])

    out = read_checkpoint(tmp_path / "lesion.pt")  # a valid model file: its weights load into its network
    assert out.spec == TINY_UNET and out.spacing == (2.5, 2.5, 4.0) and out.hu_window == (-50.0, 200.0)
    for key, value in out.state_dict.items():
        if value.is_floating_point():
            assert torch.allclose(value, (a.state_dict[key] + b.state_dict[key]) / 2)
    assert not torch.equal(out.state_dict[next(iter(out.state_dict))], a.state_dict[next(iter(a.state_dict))])
    assert {k: out.summary[k] for k in SHARED} == SHARED
    assert "min_lesion_ml" not in out.summary and "train_cases" not in out.summary  # chosen again on validation
    assert [m["best_dice"] for m in out.summary["averaged_from"]] == [0.87, 0.85]
    # what /info shows for it: an average has no training run of its own
    assert WarmModel(tmp_path / "lesion.pt", torch.device("cpu")).status().startswith(
        f"mean of the weights of 2 models, averaged {out.summary['averaged_at']}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "lesion.pt"]  # no temporary left


def test_averaging_into_one_of_its_inputs_reads_every_input_first(tmp_path):
    a, b = _fine_tune(1, dict(SHARED)), _fine_tune(2, dict(SHARED))
    pa, pb = publish_checkpoint(a, tmp_path / "a.pt"), publish_checkpoint(b, tmp_path / "b.pt")
    main([str(pa), str(pb), "--out", str(pa)])
    key = next(k for k, v in a.state_dict.items() if v.is_floating_point())
    averaged = read_checkpoint(pa)
    assert torch.allclose(averaged.state_dict[key], (a.state_dict[key] + b.state_dict[key]) / 2)
    # averaged again with a fine-tune of it: the earlier average's ingredients stay in the file
    pc = publish_checkpoint(_fine_tune(3, {**SHARED, "best_dice": 0.9}), tmp_path / "c.pt")
    main([str(pa), str(pc), "--out", str(pa)])
    lineage = read_checkpoint(pa).summary["averaged_from"]
    assert [m["model"] for m in lineage[0]["averaged_from"]] == [str(pa), str(pb)] and lineage[1]["best_dice"] == 0.9


def test_models_of_different_networks_or_grids_are_refused_and_nothing_is_written(tmp_path, capsys):
    a = _fine_tune(1, dict(SHARED))
    with pytest.raises(ValueError, match="grid spacing"):
        average_checkpoints([a, _fine_tune(2, dict(SHARED), spacing=(5.0, 5.0, 8.0))])
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([a])
    pa = publish_checkpoint(a, tmp_path / "a.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    with pytest.raises(SystemExit):
        main([str(pa), str(tmp_path / "broken.pt"), "--out", str(tmp_path / "out.pt")])
    assert "corrupt or truncated" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()
