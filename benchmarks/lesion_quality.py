"""Lesion quality of the served cascade on a fixed held-out generated set (see radcascade.lesion_quality).

    .venv/bin/python benchmarks/lesion_quality.py                       # committed starting weights, 60 studies
    .venv/bin/python benchmarks/lesion_quality.py --models name=DIR ...  # compare other model folders
    .venv/bin/python benchmarks/lesion_quality.py --choose-filter 20 --apply-to apps/radcascade/pretrained/lesion.pt
        # choose the smallest lesion kept on 20 validation studies (seed 6000), record it in the model file
    .venv/bin/python benchmarks/lesion_quality.py --choose-organ-threshold 20 --apply-to apps/radcascade/pretrained/organ.pt
        # choose the probability the organ is cut at on 20 validation studies, record it in the model file
    .venv/bin/python benchmarks/lesion_quality.py --choose-confidence 40 --apply-to apps/radcascade/pretrained/lesion.pt
        # choose the least mean probability of a lesion kept on 40 validation studies (served cascade), apart for
        # routine and noisy (low-dose) studies, record both
    .venv/bin/python benchmarks/lesion_quality.py --studies 20 --seed 6000 --mirror-axes 0 1 2 --out /tmp/x
        # a trial setting of the lesion stage on the validation studies (also --threshold, --margin-mm,
        # --min-lesion-ml, --min-inside-organ, --min-mean-probability, --min-mean-probability-noisy)

Prints a table (value [bootstrap 95% CI]) and writes ``benchmarks/results/lesion_quality.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from radcascade.cascade import Cascade
from radcascade.labels import LabelContract
from radcascade.lesion_quality import (
    HELD_OUT_SEED,
    VALIDATION_SEED,
    choose_on_validation,
    confidence_on_validation,
    evaluate,
    make_held_out_set,
    markdown_table,
    organ_threshold_curve,
    record_choice,
    record_confidence,
    record_lesion_settings,
    record_organ_threshold,
    summarise,
)
from radcascade.stages import SMALL_LESION_MODEL_FILE

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=60)
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    p.add_argument("--models", nargs="+", default=[f"committed={REPO / 'apps/radcascade/pretrained'}"],
                   help="name=folder with organ.pt, lesion.pt (and classifier.pt)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/lesion_quality")
    p.add_argument("--choose-filter", type=int, default=0, metavar="N",
                   help="choose the smallest lesion kept on N validation studies instead of evaluating")
    p.add_argument("--choose-organ-threshold", type=int, default=0, metavar="N",
                   help="choose the organ stage's probability cut on N validation studies instead of evaluating")
    p.add_argument("--organ-mirror-axes", type=int, nargs="*", default=None, metavar="AXIS",
                   help="with --choose-organ-threshold: the organ stage's test-time mirroring (recorded with the cut)")
    p.add_argument("--apply-to", type=Path, help="lesion (or, with --choose-organ-threshold, organ) model file "
                                                 "to record the choice in")
    p.add_argument("--mirror-axes", type=int, nargs="*", default=None, metavar="AXIS",
                   help="trial: lesion-stage test-time mirroring along these voxel axes (none given: no mirroring)")
    p.add_argument("--threshold", type=float, default=None, help="trial: lesion probability threshold")
    p.add_argument("--margin-mm", type=float, default=None, help="trial: lesion-stage crop margin around the organ")
    p.add_argument("--min-lesion-ml", type=float, default=None, help="trial: smallest lesion kept")
    p.add_argument("--min-inside-organ", type=float, default=None,
                   help="trial: share of a lesion that must lie inside the served organ (0: keep all)")
    p.add_argument("--min-mean-probability", type=float, default=None,
                   help="trial: least mean lesion probability of a lesion kept (0: keep all)")
    p.add_argument("--min-mean-probability-noisy", type=float, default=None,
                   help="trial: the same in a noisy (low-dose) study")
    p.add_argument("--choose-confidence", type=int, default=0, metavar="N",
                   help="choose the least mean lesion probability of a lesion kept on N validation studies")
    p.add_argument("--record-to", type=Path, help="lesion model file to record the trial's mirroring, threshold and "
                                                  "margin in (run it on validation studies: --seed 6000)")
    a = p.parse_args()
    trial = {"mirror_axes": None if a.mirror_axes is None else tuple(a.mirror_axes), "threshold": a.threshold,
             "margin_mm": a.margin_mm}
    filters = {"min_lesion_ml": a.min_lesion_ml, "min_inside_organ": a.min_inside_organ,
               "min_mean_probability": a.min_mean_probability, "min_mean_probability_noisy": a.min_mean_probability_noisy}
    if a.choose_organ_threshold:
        organ = a.apply_to or REPO / "apps/radcascade/pretrained/organ.pt"
        organ_mirror = None if a.organ_mirror_axes is None else tuple(a.organ_mirror_axes)
        cascade = Cascade(LabelContract(), organ, organ.parent / "lesion.pt", torch.device("cpu"))
        with tempfile.TemporaryDirectory(prefix="rc-validation-") as tmp:
            curve = organ_threshold_curve(cascade, Path(tmp), a.choose_organ_threshold, mirror_axes=organ_mirror)
        print("| organ cut at probability | organ Dice (pooled) |\n|---|---|")
        for k, v in curve.items():
            print(f"| {k} | {v:.4f} |")
        if a.apply_to:
            chosen = record_organ_threshold(a.apply_to, curve, f"{a.choose_organ_threshold} validation studies, seed "
                                                               f"{VALIDATION_SEED}, {time.strftime('%Y-%m-%d')}", organ_mirror)
            print(f"chosen: {chosen}, recorded in {a.apply_to}")
        return
    if a.choose_confidence or a.choose_filter:
        lesion = a.apply_to or REPO / "apps/radcascade/pretrained/lesion.pt"
        cascade = Cascade(LabelContract(), lesion.parent / "organ.pt", lesion, torch.device("cpu"),
                          small_lesion_model=lesion.parent / SMALL_LESION_MODEL_FILE)
        n = a.choose_confidence or a.choose_filter
        source = f"{n} validation studies, seed {VALIDATION_SEED}, {time.strftime('%Y-%m-%d')}"
        with tempfile.TemporaryDirectory(prefix="rc-validation-") as tmp:
            if a.choose_confidence:
                confidence = confidence_on_validation(cascade, Path(tmp), n)
                choices = {"routine studies": confidence.routine, "noisy studies": confidence.noisy}
            else:
                choices = {"": choose_on_validation(cascade, Path(tmp), n)}
        what = "least mean probability kept" if a.choose_confidence else "smallest lesion kept (ml)"
        for group, choice in choices.items():
            if choice is None:
                print(f"no {group} among the validation studies: they get the routine cut")
                continue
            print(f"\n{group}\n| {what} | recall | recall >=10 mm | false positives / study |\n|---|---|---|---|")
            for k, v in choice.curve.items():
                print(f"| {k} | {v['recall']:.3f} | {v['recall_ge_10mm']:.3f} | {v['false_positives_per_study']:.2f} |")
            print(f"chosen: {choice.chosen}")
        if a.apply_to:
            if a.choose_confidence:
                record_confidence(a.apply_to, confidence, source)
            else:
                record_choice(a.apply_to, choices[""], source)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    reports, outcomes = {}, {}
    with tempfile.TemporaryDirectory(prefix="rc-heldout-") as tmp:
        held_out = make_held_out_set(Path(tmp), a.studies, a.seed)
        for spec in a.models:
            name, folder = spec.split("=", 1)
            folder = Path(folder)
            cascade = Cascade.in_folder(LabelContract(), folder, torch.device("cpu"), min_lesion_ml=a.min_lesion_ml,
                                        min_inside_organ=a.min_inside_organ, min_mean_probability=a.min_mean_probability,
                                        min_mean_probability_noisy=a.min_mean_probability_noisy)
            for k, v in trial.items():
                if v is not None:
                    setattr(cascade.lesion_stage, k, v)
            outcomes[name] = evaluate(cascade, held_out)
            reports[name] = summarise(outcomes[name], a.bootstrap)
    table = markdown_table(reports)
    print(table)
    trial_args = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
                          for k, v in {**trial, **filters}.items()
                          if v is not None)
    meta = {"command": "benchmarks/lesion_quality.py --models " + " ".join(a.models).replace(f"{REPO}/", "")
            + (f" --studies {a.studies} --seed {a.seed} " if (a.studies, a.seed) != (60, HELD_OUT_SEED) else " ")
            + trial_args,
            "studies": a.studies, "seed": a.seed, "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, no GPU"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "reports": {k: r.to_json() for k, r in reports.items()},
         "studies": {k: [o.__dict__ for o in v] for k, v in outcomes.items()}}, indent=1, default=str))
    a.out.with_suffix(".md").write_text(f"# Lesion quality on the held-out set\n\n{json.dumps(meta)}\n\n{table}\n")
    if a.record_to:
        record_lesion_settings(a.record_to, {**trial, **filters}, f"{a.studies} studies, seed {a.seed}, {meta['date']}: {meta['command']}")


if __name__ == "__main__":
    main()
