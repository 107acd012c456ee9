"""Training throughput with 1 and N processes (torch.distributed; gloo on CPU, NCCL on GPUs).

The organ stage trains on the same generated studies with each process count and the same global
batch; what is measured is wall time including caching, and patches per second (global).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from radcascade.distributed import Distributed, spawn
from radcascade.labels import LabelContract
from radcascade.networks import UNetSpec
from radcascade.sample_data import generate_datastore
from radcascade.training import TrainConfig, Trainer, cases_from_folder

STUDY_SEED = 8100  # generated studies of this benchmark (disjoint from the sample set and the weights')
SAMPLES_PER_VOLUME = 4


@dataclass(frozen=True)
class ScalingRow:
    processes: int
    seconds: float
    patches_per_s: float


def _timed_fit(ctx: Distributed, cfg: TrainConfig, cases, model: Path, out: Path) -> None:
    t0 = time.perf_counter()
    result = Trainer(cfg, LabelContract(), model, dist=ctx).fit(cases)
    if ctx.main:
        out.write_text(json.dumps({"seconds": time.perf_counter() - t0, "epochs": result.epochs_done}))


def measure(process_counts: Sequence[int], studies: int, epochs: int, global_batch: int, work: Path,
            spec: UNetSpec | None = None) -> list[ScalingRow]:
    """One organ training per process count on ``studies`` generated studies; rows in the given order
    (``spec``: the organ stage's network unless given)."""
    generate_datastore(work / "studies", studies, 0, seed=STUDY_SEED, prefix="scale")
    cases = cases_from_folder(work / "studies")
    rows = []
    for n in process_counts:
        if global_batch % n:
            raise ValueError(f"the global batch {global_batch} does not split over {n} processes")
        cfg = TrainConfig(stage="organ", max_epochs=epochs, batch_size=global_batch // n, val_fraction=0.0,
                          warm_start=False, samples_per_volume=SAMPLES_PER_VOLUME, spec=spec)
        timing = work / f"timing-{n}.json"
        if n == 1:
            _timed_fit(Distributed(), cfg, cases, work / f"organ-{n}.pt", timing)
        else:
            spawn(n, _timed_fit, cfg, cases, work / f"organ-{n}.pt", timing)
        seconds = json.loads(timing.read_text())["seconds"]
        patches = studies * SAMPLES_PER_VOLUME * epochs
        rows.append(ScalingRow(n, round(seconds, 1), round(patches / seconds, 2)))
    return rows


def render(rows: Sequence[ScalingRow], meta: dict) -> str:
    """The Markdown report of a run (also rebuilt from the recorded JSON)."""
    table = "| processes | seconds (incl. caching) | patches / s |\n|---|---|---|\n" + "\n".join(
        f"| {r.processes} | {r.seconds} | {r.patches_per_s} |" for r in rows)
    return f"# Training throughput\n\n{json.dumps(meta)}\n\n{table}\n"


def write(rows: Sequence[ScalingRow], meta: dict, out: Path) -> str:
    """Record ``out.json`` (meta and rows) and ``out.md``; returns the Markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    text = render(rows, meta)
    out.with_suffix(".md").write_text(text)
    return text


def load(path: Path) -> tuple[list[ScalingRow], dict]:
    """Rows and meta of a recorded run."""
    recorded = json.loads(path.read_text())
    return [ScalingRow(**r) for r in recorded["rows"]], recorded["meta"]
