"""Weight averaging ("model soup"): one UNet model file whose weights are the mean of several models
fine-tuned from the same parent.

Networks fine-tuned from one starting point on different studies stay in one basin of the loss, and the
mean of their weights is usually better than each of them (Wortsman et al., 2022, "Model soups"). For
the lesion stage, two 26-epoch fine-tunes of the committed network on different generated studies found
117 and 118 of 135 validation lesions >= 10 mm with 2 and 7 false positives; their average found 118
with 2 (docs/benchmarks.md, lesion quality, ninth round).

The averaged file is published atomically. Only models with the same network description, grid spacing
and CT window can be averaged. Post-processing choices that the inputs share (test-time mirroring, the
share of a lesion inside the organ) are kept; those on which they differ (the smallest lesion, the
confidence cuts: each trainer chose its own on its own validation studies) are left out, so the averaged
model serves the defaults until they are chosen again on validation (``benchmarks/lesion_quality.py
--choose-filter N --apply-to FILE`` and ``--choose-confidence N --apply-to FILE``).

    python -m radcascade.weight_averaging --out apps/radcascade/pretrained/lesion.pt a/lesion.pt b/lesion.pt
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

import torch

from radcascade.checkpoints import Checkpoint, CheckpointError, publish_checkpoint, read_checkpoint

logger = logging.getLogger(__name__)
# What a trainer records about its own run: replaced in the average by the list of the models averaged.
TRAINING_RUN_KEYS = ("trained_at", "best_dice", "best_epoch", "epochs", "train_cases", "val_cases")


def average_checkpoints(checkpoints: Sequence[Checkpoint], names: Sequence[str] | None = None) -> Checkpoint:
    """The checkpoint whose floating-point weights are the mean of ``checkpoints``' (integer buffers,
    such as a normalisation's step counter, must be equal and are kept). ``names`` label the inputs in the
    result's summary. Raises ValueError for fewer than two inputs or inputs of different networks."""
    if len(checkpoints) < 2:
        raise ValueError("averaging needs at least two model files")
    names = list(names) if names is not None else [f"model {i}" for i in range(len(checkpoints))]
    first = checkpoints[0]
    for name, ck in zip(names[1:], checkpoints[1:]):
        for what, a, b in (("network", first.spec, ck.spec), ("grid spacing", first.spacing, ck.spacing),
                           ("CT window", first.hu_window, ck.hu_window)):
            if a != b:
                raise ValueError(f"{name} has another {what} ({b}) than {names[0]} ({a}): only fine-tunes of "
                                 "one network can be averaged")
        if ck.state_dict.keys() != first.state_dict.keys():
            raise ValueError(f"{name} holds other weights than {names[0]}")
    state = {}
    for key, value in first.state_dict.items():
        values = [ck.state_dict[key] for ck in checkpoints]
        if value.is_floating_point():
            state[key] = torch.stack([v.float() for v in values]).mean(0).to(value.dtype)
        elif all(torch.equal(value, v) for v in values[1:]):
            state[key] = value.clone()
        else:
            raise ValueError(f"the models differ in the integer buffer '{key}', which cannot be averaged")
    return Checkpoint(first.spec, state, first.spacing, _shared_summary(checkpoints, names), first.hu_window)


def _shared_summary(checkpoints: Sequence[Checkpoint], names: Sequence[str]) -> dict:
    """The summary entries all inputs agree on (their own training runs left out), and what was averaged."""
    summary = {}
    for key, value in checkpoints[0].summary.items():
        if key in TRAINING_RUN_KEYS or key == "averaged_from":
            continue
        if all(ck.summary.get(key) == value for ck in checkpoints[1:]):
            summary[key] = value
        else:
            logger.info("averaged model: '%s' differs between the inputs; left out (choose it again on validation)", key)
    # an input that is itself an average keeps its own ingredients, so the whole lineage stays in the file
    summary["averaged_from"] = [
        {"model": name, **{k: ck.summary[k] for k in ("trained_at", "best_dice", "best_epoch", "averaged_from")
                           if k in ck.summary}}
        for name, ck in zip(names, checkpoints)]
    summary["averaged_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return summary


def average_model_files(paths: Sequence[str | Path], out: str | Path) -> Checkpoint:
    """Read the model files ``paths``, average them and publish the result at ``out`` atomically (``out``
    may be one of the inputs: every input is read before anything is written)."""
    checkpoints = [read_checkpoint(p) for p in paths]
    averaged = average_checkpoints(checkpoints, [str(p) for p in paths])
    publish_checkpoint(averaged, out)
    return averaged


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="UNet model files fine-tuned from one parent")
    parser.add_argument("--out", type=Path, required=True, help="where to publish the averaged model file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        average_model_files(args.models, args.out)  # logs each setting it leaves out
    except (ValueError, OSError, CheckpointError) as e:
        parser.error(str(e))
    print(f"published {args.out}: the mean of {len(args.models)} models")


if __name__ == "__main__":
    main()
