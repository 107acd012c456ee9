"""Does a study's uncertainty point at what the models get wrong? Aggregations compared, no server.

Active learning only beats random if the per-study score ranks the studies the models handle
badly (or that hold what they have not learned: lesions) above the rest. This measures that
directly, before any retraining loop: per seed, the loop's starting models are trained (as in
``active_learning.py``), every pool study is scored and segmented, and each candidate score is
compared with the truth:

* ``auroc_lesion``: ROC AUC of the score for "the study holds a lesion" (the studies a screening
  worklist should hand out first);
* ``rho_lesion_err``: Spearman correlation with the study's lesion error, 1 - lesion Dice
  (studies where both prediction and truth are empty count as 0 error);
* ``rho_organ_err``: Spearman correlation with 1 - organ Dice;
* ``auroc_low_dose`` (with ``--low-dose-pool``): ROC AUC for "the study comes from the low-dose
  protocol the starting models never saw".

Candidate scores: per stage (``organ``, ``lesion``) and kind (``mc`` = MC-dropout entropy, ``tta`` =
test-time-augmentation spread), the voxel values inside the predicted organ aggregated as the
``mean`` (what the app used until 2026-11-23) or the mean of the top ``--top``-fraction voxels
(``peak``: a small lesion is <1% of an organ, a mean dilutes it); plus the stored ``epistemic``,
``tta``, ``classifier`` and ``combined`` values the app ranks by.

(The logic of ``benchmarks/uncertainty_signal.py``.)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from radcascade.active_learning import score_value
from radcascade.evaluation import binary_auroc, dice
from radcascade.experiments.annotation_loop import (case, cascade_of, low_dose_indices, make_studies,
                                                    screening_indices, train_round)
from radcascade.experiments.common import mean_std
from radcascade.labels import LabelContract
from radcascade.uncertainty import CascadeUncertainty, StageMaps
from radcascade.volumes import load_volume

STAGE_KINDS = [(stage, kind) for stage in ("organ", "lesion") for kind in ("mc", "tta")]
STORED = ("epistemic", "tta", "classifier", "combined")


def peak(maps: StageMaps, voxels: torch.Tensor, top: float) -> float:
    """Mean of the highest ``top`` fraction of the voxel values inside the region."""
    values = voxels[maps.region].flatten()
    if values.numel() == 0:
        return 0.0
    k = max(1, int(round(top * values.numel())))
    return float(values.topk(k).values.mean())


def candidate_scores(scorer: CascadeUncertainty, volume, top: float) -> dict[str, float]:
    maps = scorer.maps(volume)
    if maps is None:  # no organ found: every score is maximal (as CascadeUncertainty.score)
        return {**{name: 1.0 for name in STORED}, **{f"{s}-{k}-{a}": 1.0 for s, k in STAGE_KINDS for a in ("mean", "peak")}}
    record = scorer.score(volume, maps).to_json()
    out = {name: score_value(record, name) for name in STORED}
    for stage, kind in STAGE_KINDS:
        m = getattr(maps, stage)
        voxels = m.mc_entropy if kind == "mc" else m.tta_spread
        out[f"{stage}-{kind}-mean"] = m.aggregate(voxels)
        out[f"{stage}-{kind}-peak"] = peak(m, voxels, top)
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(stats.spearmanr(a, b).statistic)


def run_seed(seed: int, a, work: Path, contract: LabelContract) -> dict[str, dict[str, float | None]]:
    folder = work / f"seed{seed}"
    low_dose = low_dose_indices(seed, a.initial, a.pool, a.low_dose_pool)
    studies = make_studies(folder, a.initial + a.pool, 100 + seed, f"s{seed}",
                           screening_indices(seed, a.initial, a.pool, a.lesion_free_pool), low_dose)
    is_low_dose = [a.initial + i in low_dose for i in range(a.pool)]
    initial, pool = studies[:a.initial], studies[a.initial:]
    model_dir = work / f"seed{seed}-model"
    train_round(model_dir, [case(folder, s.name) for s in initial], a.initial_epochs, 1000 * seed, contract)
    cascade = cascade_of(model_dir, contract)
    scorer = CascadeUncertainty(cascade)
    rows, has_lesion, lesion_err, organ_err = [], [], [], []
    for s in pool:
        volume = load_volume(folder / f"{s.name}.nii.gz")
        rows.append(candidate_scores(scorer, volume, a.top))
        label = cascade.run(volume).label
        has_lesion.append(bool((s.label >= 2).any()))
        lesion_err.append(1.0 - dice(label >= 2, s.label >= 2))
        organ_err.append(1.0 - dice(label >= 1, s.label >= 1))
    result = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        result[name] = {"auroc_lesion": binary_auroc(values, has_lesion), "rho_lesion_err": spearman(values, lesion_err),
                        "rho_organ_err": spearman(values, organ_err), "auroc_low_dose": binary_auroc(values, is_low_dose)}
    print(f"seed {seed}: {sum(has_lesion)} of {len(pool)} pool studies with lesions, mean lesion error "
          f"{np.mean(lesion_err):.3f}, organ error {np.mean(organ_err):.3f}", flush=True)
    for name, r in result.items():
        print(f"  {name:<18} " + "  ".join(f"{k} {v:+.2f}" if v is not None else f"{k} -" for k, v in r.items()),
              flush=True)
    return result


def run(a) -> dict:
    """Every seed of ``a`` (the script's options) in a scratch folder: {seed: {score: figures}}."""
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="radcascade-us-"))
    try:
        return {seed: run_seed(seed, a, work, LabelContract()) for seed in a.seeds}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(per_seed: dict, low_dose: bool) -> str:
    """Mean ± std over the seeds of every score's figures (a Markdown table)."""
    names = list(next(iter(per_seed.values())))
    columns = ("auroc_lesion", "rho_lesion_err", "rho_organ_err") + (("auroc_low_dose",) if low_dose else ())
    lines = ["| score | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = [mean_std([v for s in per_seed.values() if (v := s[name][c]) is not None]) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(record: dict) -> str:
    """The report of a run from its record (what the results JSON holds)."""
    r = record
    return (
        f"# Does the uncertainty point at what the models get wrong? (mean ± std over seeds {r['seeds']})\n\n"
        f"- command: `{r['command']}` ({r['minutes']} min)\n- machine: {r['machine']}\n- date: {r['date']}\n"
        f"- starting models: {r['initial']} labelled studies, {r['initial_epochs']} epochs (as `active_learning.py`'s round 0)\n"
        f"- pool: {r['pool']} studies, {r['lesion_free_pool']:.0%} generated without lesions; `peak` = mean of the top "
        f"{r['top']:.0%} of the organ's voxels; {r.get('low_dose_pool', 0.0):.0%} of the pool low-dose (`auroc_low_dose`: ROC AUC "
        f"of the score for \"the study is low-dose\")\n\n{table(r['per_seed'], bool(r.get('low_dose_pool')))}\n")
