"""Batched MC-dropout / TTA passes give what one-at-a-time passes give (scoring speed-up)."""

import torch

from radcascade.networks import UNetSpec
from radcascade.uncertainty import TTA_FLIPS, TTA_SHIFTS, CascadeUncertainty


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNetSpec(channels=(4, 8), strides=(2,), num_res_units=0, dropout=0.3).build().eval()


def _sequential_tta(net, x):
    outs = []
    for f in TTA_FLIPS:
        for shift in TTA_SHIFTS:
            inp = (x.flip(f) if f else x) + shift
            p = torch.softmax(net(inp.unsqueeze(0))[0], 0)[1]
            outs.append(p.flip(tuple(d - 1 for d in f)) if f else p)
    return torch.stack(outs)


def test_batched_tta_equals_one_at_a_time():
    net, x = _net(), torch.randn(1, 12, 10, 8)
    expected = _sequential_tta(net, x)
    for batch in (1, 5, 12):
        scorer = CascadeUncertainty(cascade=None, batch=batch)
        organ = scorer._organ_probs(net, x, divisor=2, mc=False)
        lesion = scorer._lesion_probs(net, x, roi=(12, 10, 8), mc=False)
        assert torch.allclose(organ, expected, atol=1e-5)
        assert torch.allclose(lesion, expected, atol=1e-5)


def test_batched_mc_passes_are_independent_and_restore_eval_mode():
    net, x = _net(), torch.randn(1, 12, 10, 8)
    probs = CascadeUncertainty(cascade=None, passes=4, batch=4)._organ_probs(net, x, divisor=2, mc=True)
    assert probs.shape == (4, 12, 10, 8)
    assert (probs[0] - probs[1]).abs().max() > 1e-4  # each pass drew its own dropout masks
    assert not any(m.training for m in net.modules())
