"""The stock comparison's report: tables, plot and Markdown, from a results record (a fresh run's, or
one recorded as JSON)."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from radcascade.experiments.stock_comparison import (MIN_IOU, OUR_STAGES, SEEDS, STOCK_STAGES, STOCK_TRAIN_REQUEST, log,
                                                     recorded_options, stock_app_dir, stock_conf)


def fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def report(res: dict) -> str:
    rows = []
    for kind in ("sample", "ct"):
        (shape, spacing) = res["sizes"][kind]
        label = f"{'sample' if kind == 'sample' else 'CT'} {'x'.join(map(str, shape))} @{'x'.join(f'{v:g}' for v in spacing)}mm"
        for side in ("stock", "ours", "reference"):
            s = res.get(side, {}).get("summary", {}).get(kind)
            if not s:
                continue
            if not s["n"]:
                rows.append(f"| {res[side]['name']} | {label} (n=0: {s['capped']} unfinished) | "
                            f"> {s['latency_more_than_s']:.0f} (stopped) | >= {fmt(s['peak_mb_at_cap'], '.0f')} at the stop "
                            "| - | - | - | - |")
                continue
            rows.append(f"| {res[side]['name']} | {label} (n={s['n']}) | {fmt(s['latency_s_median'], '.2f')} | "
                        f"{fmt(res[side]['peak_mb'], '.0f')} | {fmt(s['organ_dice_mean'])} | {fmt(s['lesion_dice_pooled'])} | "
                        f"{fmt(s['lesion_recall'], '.2f')} ({s['truth_lesions']}) | {fmt(s['lesion_precision'], '.2f')} "
                        f"({s['pred_components']}) |")
    table = ("| app | test volumes | /infer s (median) | peak host MiB | organ Dice | lesion Dice | lesion recall (truth n) "
             "| lesion precision (pred n) |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    return table


def stage_table(res: dict) -> str:
    lines = []
    for side, stages in (("ours", OUR_STAGES + ("total",)), ("stock", STOCK_STAGES + ("total",)),
                         ("reference", OUR_STAGES + ("total",))):
        for kind in ("sample", "ct"):
            s = res.get(side, {}).get("summary", {}).get(kind)
            if not s:
                continue
            if not s.get("n"):
                continue
            st = s["stage_latency_s_median"]
            lines.append(f"| {res[side]['name']} | {kind} | " + ", ".join(f"{k} {st[k]:.3f}" for k in stages if k in st)
                         + " |")
    return "| app | volumes | median seconds per stage (inside the infer task) |\n|---|---|---|\n" + "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    kinds = [k for k in ("sample", "ct") if res["ours"]["summary"].get(k) and res["stock"]["summary"].get(k)]
    x = np.arange(len(kinds))
    for i, (side, colour) in enumerate((("stock", "tab:gray"), ("ours", "tab:blue"))):
        lat = [res[side]["summary"][k].get("latency_s_median") or res[side]["summary"][k]["latency_more_than_s"]
               for k in kinds]
        bars = axes[0].bar(x + (i - 0.5) * 0.38, lat, 0.38, label=res[side]["name"], color=colour)
        for b, k in zip(bars, kinds):
            if not res[side]["summary"][k].get("n"):
                b.set_hatch("//")
                axes[0].annotate("stopped:\n> this", (b.get_x() + b.get_width() / 2, b.get_height() ** 0.5),
                                 ha="center", va="center", fontsize=7, backgroundcolor="white")
    axes[0].set_xticks(x, [{"sample": "sample-sized", "ct": "CT 512x512x200"}[k] for k in kinds])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("/infer end to end, s (median, log)")
    axes[0].legend(fontsize=8)
    metrics = ("organ_dice_mean", "lesion_dice_pooled", "lesion_recall", "lesion_precision")
    xm = np.arange(len(metrics))
    for i, (side, colour) in enumerate((("stock", "tab:gray"), ("ours", "tab:blue"))):
        vals = []
        for m in metrics:
            v = [res[side]["summary"][k][m] for k in kinds if res[side]["summary"][k].get(m) is not None]
            vals.append(float(np.mean(v)) if v else 0.0)
        axes[1].bar(xm + (i - 0.5) * 0.38, vals, 0.38, label=res[side]["name"], color=colour)
    axes[1].set_xticks(xm, ["organ Dice", "lesion Dice", "lesion recall", "lesion prec."], fontsize=8)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("test set (mean over the sizes each app finished)", fontsize=9)
    tr = res["training"]
    c = tr["stock"]["curve"]
    on = c[0]["metric_on"] if c else "train"
    axes[2].plot([p["t_s"] / 60 for p in c], [p["organ_val_dice"] for p in c], "o-", color="tab:gray",
                 label=f"stock: organ (its {on} Dice)")
    axes[2].plot([p["t_s"] / 60 for p in c], [p["lesion_val_dice_mean_of_classes"] for p in c], "x--", color="tab:gray",
                 label=f"stock: lesion classes (mean, its {on} Dice)")
    off = tr["ours"]["classifier"]["wall_s"] / 60
    oc = tr["ours"]["organ"]["curve"]
    axes[2].plot([off + p["t_s"] / 60 for p in oc], [p["val_dice"] for p in oc], "o-", color="tab:blue", ms=3,
                 label="ours: organ stage (its val)")
    off2 = off + tr["ours"]["organ"]["wall_s"] / 60
    lc = tr["ours"]["lesion"]["curve"]
    axes[2].plot([off2 + p["t_s"] / 60 for p in lc], [p["val_dice"] for p in lc], "x--", color="tab:blue", ms=3,
                 label="ours: lesion stage (its val)")
    axes[2].set_xlabel("training wall time, min")
    axes[2].set_ylabel("Dice during training")
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=7)
    fig.suptitle(f"radcascade vs stock MONAI Label radiology `segmentation` (CPU, T = {res['minutes']} min each)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(res: dict, a: argparse.Namespace, stem: Path) -> None:
    """``stem``.json (every figure), then the report and plot rendered from it."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
    render(res, a, stem)


def render(res: dict, a: argparse.Namespace, stem: Path) -> None:
    """``stem``.md and .png of a results record (a fresh run's, or a recorded JSON's)."""
    table, stages = report(res), stage_table(res)
    print(table)
    print(stages)
    plot(res, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(markdown(res, a, table, stages))
    log(f"wrote {stem}.md/.png (run {res['run_wall_s']} s)")


def render_from_json(path: Path) -> Path:
    """The report and plot of a recorded results file (beside it), with the options its command recorded."""
    path = Path(path)
    res = json.loads(path.read_text())
    a = recorded_options(res)
    a.name = path.stem
    render(res, a, path.with_suffix(""))
    return path.with_suffix(".md")


def gpu_phases(res: dict) -> list[tuple[str, dict]]:
    phases = [("stock training", res["training"]["stock"].get("gpu")), ("our training", res["training"]["ours"].get("gpu")),
              ("stock /infer", res["stock"]["infer"].get("gpu")), ("our /infer", res["ours"]["infer"].get("gpu"))]
    return [(k, g) for k, g in phases if g]


def gpu_line(res: dict) -> str:
    phases = gpu_phases(res)
    if not phases:
        return "- GPU figures (memory, utilisation): not measured, no GPU (no `nvidia-smi`) on this machine"
    return "- GPU 0, sampled with `nvidia-smi` every second: " + "; ".join(
        f"{k}: utilisation mean {g['util_mean_pct']}% (median {g['util_median_pct']}%), memory max "
        f"{g['memory_max_mib']:.0f} MiB" for k, g in phases)


def gpu_target_line(res: dict) -> str:
    phases = dict(gpu_phases(res))
    if not phases:
        return "- GPU targets (<= 1 s for a 512x512x200 CT, GPU utilisation while training): not measured, no GPU."
    ct = res["ours"]["summary"].get("ct") or {}
    latency = ct.get("latency_s_median")
    verdict = "not measured" if latency is None else ("met" if latency <= 1.0 else "NOT met")
    train = phases.get("our training")
    util = f"{train['util_mean_pct']}% mean utilisation while our stages trained" if train else "training not sampled"
    return (f"- GPU: ours on the 512x512x200 CT {fmt(latency, '.2f')} s end to end (target <= 1 s: {verdict}); {util} "
            f"(data loading starves the GPU where this is low)")


def detection_text(res: dict) -> str:
    """How a result's lesions were matched: runs recorded before the one definition say ``overlap_criterion``."""
    if "overlap_criterion" in res:
        return ("a true\nlesion counts as found when >= 10% of its voxels are predicted lesion, a predicted component\n"
                "counts as correct when >= 10% of its voxels are true lesion (this run's own definition, before the\n"
                "benchmarks shared `radcascade.evaluation.lesion_detection`)")
    return (f"a true\nlesion counts as found when some predicted component overlaps it with IoU >= {MIN_IOU:g}, a\n"
            f"predicted component counts as correct when it overlaps some true lesion so\n"
            f"(`radcascade.evaluation.lesion_detection`)")


def markdown(res: dict, a, table: str, stages: str) -> str:
    tr = res["training"]
    st, ou = tr["stock"], tr["ours"]
    tt = res["time_to_target"]
    cls = res["ours"]["eval"]["classification"]
    reference_note = ""
    if res.get("reference"):
        rc = res["reference"]["eval"]["classification"]
        reference_note = (
            "The last rows (`committed starting weights`) are context, not part of the equal-budget comparison: our "
            "app with `apps/radcascade/pretrained/` (UNets trained ~50 min on 32 other generated studies, "
            "classifier head on 60), same server protocol, same test studies; its classification AUC "
            f"{fmt(rc['auc'])} (accuracy {fmt(rc['accuracy'])}, n = {rc['n']} detected lesions).\n\n")
    scls = res["stock"]["eval"]["classification"]
    yes = lambda b: "not measured" if b is None else ("met" if b else "NOT met")  # noqa: E731
    tgt = "\n".join(
        f"- {k}: ours/stock latency {'<' if v['ratio_is_upper_bound'] else '='} {v['latency_ratio']:.4f} "
        f"(target <= 0.333: {yes(v['latency_met'])}); lesion Dice ours {v['lesion_dice_ours']:.3f} vs stock "
        f"{fmt(v['lesion_dice_stock'])} (equal or better: {yes(v['lesion_dice_met'])}"
        + (" -- trivially: both 0, neither app segmented any lesion" if v.get("lesion_dice_trivial") else "")
        + f") -> **{yes(v['met'])}{' (trivially)' if v.get('lesion_dice_trivial') and v['met'] else ''}**"
        for k, v in res["targets"].items())
    sec = lambda v: "not reached" if v is None else f"{v / 60:.1f} min"  # noqa: E731
    note = f"\n- **{a.shared_note}**" if a.shared_note else ""
    how = ("its trained models measured again on the test set below with" if "--reinfer" in
           (res.get("report_rendered_with") or "") else "this report re-rendered from the kept run with")
    rendered = (f"; {how} "
                f"`{res['report_rendered_with']}`" if res.get("report_rendered_with") else "")
    skipped = (f" (not measured on the stock app: {', '.join(res['stock']['infer']['skipped'])})"
               if res["stock"]["infer"].get("skipped") else "")
    return f"""# radcascade vs the stock MONAI Label radiology app (CPU)

- command: `{res['command']}`{rendered}
- machine: {res['machine']}
- date: {res['date']}; training + measuring took {res['run_wall_s'] / 60:.1f} min (data generation not counted); 1-min load average {res['load_average']['start'][0]:.1f}
  at the start, {res['load_average']['end'][0]:.1f} at the end (2 cores){note}
- training budget T = {res['minutes']} min of wall time per app, from cold, on the same {res['train_studies']}
  generated sample-sized studies (seed {SEEDS['train']}; our trainers hold out 20% of them for validation, the
  stock trainer was run without a validation split, see below)
- test set (held out, generated with other seeds): {a.sample_test} sample-sized studies
  ({'x'.join(map(str, res['sizes']['sample'][0]))} @ 2.5x2.5x4 mm, seed {SEEDS['sample']}) and {a.ct_test} CT-sized (512x512x200 @ 0.8x0.8x2.5 mm, seed {SEEDS['ct']})
- both servers started fresh after training, measured with the same `MONAILabelClient`; one warm-up request on a
  small extra study (48x48x24 @ 3x3x6 mm, loads the models) discarded, then each test study
  {a.stock_repeats}x (stock) / {a.repeats}x (ours), median; latency = the client call, end to end (the image is
  already in the server's datastore; includes writing and downloading the label file). A stock request still
  running after {a.stock_cap:.0f} s (sample-sized) or {a.stock_cap_ct:.0f} s (CT-sized) is stopped (the server
  killed) and reported as "> that"; studies after it are not measured{skipped}
- baseline: `{stock_app_dir()}` (copied unmodified to a scratch folder and started there) with
  `--conf models segmentation --conf labels {stock_conf()['labels']!r} --conf use_pretrained_model false --conf sam2 false`;
  trained through `POST /train/segmentation` with `{json.dumps(STOCK_TRAIN_REQUEST)}` (all other options its defaults), stopped with
  `DELETE /train/` at T; without a validation split it publishes its checkpoint of best *training* Dice after
  every epoch (with one, a single validation pass over one organ at 96^3 windows costs minutes on 2 cores)
- ours: classifier {ou['classifier']['mode']} ({ou['classifier']['wall_s']:.0f} s), then
  `python -m radcascade.training --cold --stages organ` ({ou['organ']['wall_s']:.0f} s, {a.organ_share:.0%} of the
  rest of T) and `--stages lesion` ({ou['lesion']['wall_s']:.0f} s, the remainder); total {ou['wall_s']:.0f} s
- peak host memory: max `VmHWM` over the server's processes (the server proper), read after the requests
{gpu_line(res)}

## Results

{table}

{reference_note}Lesion Dice is pooled over the studies of a size (all lesion classes merged vs truth). Lesion-wise
detection: connected components (26-connectivity) of the predicted and true lesion masks; {detection_text(res)}.

Per-stage latencies (each app's own result JSON):

{stages}

Classification (detected true lesions, benign vs malignant):
- ours (classifier probability): AUC {fmt(cls['auc'])}, accuracy {fmt(cls['accuracy'])}, n = {cls['n']}
- stock: the stock app has no lesion classifier; scored from its per-voxel lesion classes (fraction of a lesion's
  predicted voxels given the malignant value): AUC {fmt(scls['auc'])}, accuracy {fmt(scls['accuracy'])}, n = {scls['n']}

## Training

| | epochs in T | time per epoch (median) | first epoch done at | best Dice seen by its trainer | organ Dice >= {a.target_organ_dice} at | lesion Dice >= {a.target_lesion_dice} at |
|---|---|---|---|---|---|---|
| stock `segmentation` | {st['epochs_done']} | {fmt(statistics.median(st['epoch_s_from_log']) if st['epoch_s_from_log'] else st['epoch_s_median'], '.1f')} s (its log: {st['epoch_s_from_log']}) | {fmt(st['first_epoch_end_s'], '.0f')} s | {fmt((st['final_stats'] or {}).get('best_metric'))} (mean of 3 labels, on {st['curve'][0]['metric_on'] if st['curve'] else '-'} patches) | {sec(tt['stock_organ_s'])} | {sec(tt['stock_lesion_s'])} (mean of the 2 lesion classes) |
| ours, organ stage | {ou['organ']['epochs_done']} | {fmt(ou['organ']['epoch_s_median'], '.1f')} s | {fmt(ou['organ']['first_epoch_end_s'], '.0f')} s | {fmt(ou['organ']['best_val_dice'])} | {sec(tt['ours_organ_s'])} | |
| ours, lesion stage | {ou['lesion']['epochs_done']} | {fmt(ou['lesion']['epoch_s_median'], '.1f')} s | {fmt(ou['lesion']['first_epoch_end_s'], '.0f')} s | {fmt(ou['lesion']['best_val_dice'])} | | {sec(tt['ours_lesion_s'])} |

Times to a target are wall time from the start of that app's training (ours: classifier and organ stage
included before the lesion stage), read from what each trainer reports, which differ (the stock app: per label
at 1.5 mm on its training crops, epoch ends seen by polling `/info` every 5 s; ours: the stage's binary Dice on
its held-out validation studies) -- the test-set figures above are the comparable ones.

## Targets (issue 5)

{tgt}
{gpu_target_line(res)}

Plot: `{a.name}.png`. Raw figures (per study, training curves): `{a.name}.json`.
"""
