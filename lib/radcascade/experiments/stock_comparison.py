"""The cascade against the stock MONAI Label radiology app's `segmentation` model, head to head.

Baseline: the radiology sample app that the monailabel wheel installs (``<venv>/monailabel/
sample-apps/radiology``), started unmodified as a peer server with ``--conf models segmentation
--conf labels <our label names> --conf use_pretrained_model false --conf sam2 false`` (SegResNet
over the whole volume at 1.5 mm, sliding window, ROI 96^3). The benchmark copies that folder to a
scratch directory before starting it (so its trained model and logs land there and not inside the
venv, and no earlier run's model is warm-started); nothing of it is copied into this project.

Both sides train from cold for the same wall-time budget on the same generated studies: the stock
model through its own ``/train/segmentation`` (stopped with ``DELETE /train/`` when the budget is
spent), ours with the project's CLIs (classifier head in deep-features mode, then organ, then
lesion stage; ``--cold``). Then each app is started fresh and measured through the same real
``MONAILabelClient`` on the same held-out studies: end-to-end ``/infer`` latency (one warm-up
request discarded), per-stage latencies, peak host memory of the server processes, organ and
lesion Dice, lesion-wise recall/precision and (ours) classification AUC.

Lesion-wise detection is :func:`radcascade.evaluation.lesion_detection` (a true lesion is found when
a predicted component overlaps it with IoU >= 0.1), the definition every benchmark reports; results
recorded before 2026-11-29 used this script's own ">= 10% of a component's voxels" and say so
(``overlap_criterion`` in their JSON, and their report's text).

(The logic of ``benchmarks/stock_comparison.py``.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from radcascade import localserver
from radcascade.evaluation import classification_metrics, dice, match_lesions
from radcascade.experiments.common import (CT_SIZE, PRETRAINED, SAMPLE_SIZE, GpuMonitor, decode_result, install_weights,
                                           meta, start_cascade_server)
from radcascade.labels import FIRST_LESION_VALUE, LabelContract
from radcascade.sample_data import generate_datastore

CONTRACT = LabelContract()
MIN_IOU = 0.1  # lesion-wise matching (radcascade.evaluation.lesion_detection)
DETECTION_CRITERION = f"IoU >= {MIN_IOU} with a component of the other side (radcascade.evaluation.lesion_detection)"
SEEDS = {"train": 7100, "sample": 7200, "ct": 7300, "warmup": 7400}
WARMUP_SIZE = ((48, 48, 24), (3.0, 3.0, 6.0))  # 144 mm cube: one 96^3 window at 1.5 mm
OUR_STAGES = ("load", "organ", "lesion", "postprocess", "classifier", "write")
STOCK_STAGES = ("pre", "infer", "invert", "post", "write")


def stock_app_dir() -> Path:
    """The radiology app the monailabel wheel installs (``<prefix>/monailabel/sample-apps/radiology``)."""
    candidates = [Path(sys.prefix) / "monailabel" / "sample-apps" / "radiology"]
    import monailabel

    candidates.append(Path(monailabel.__file__).resolve().parent / "sample-apps" / "radiology")
    for c in candidates:
        if (c / "main.py").exists() and (c / "lib" / "configs" / "segmentation.py").exists():
            return c
    raise SystemExit(f"stock radiology app not found in {[str(c) for c in candidates]}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ data
def make_data(root: Path, n_train: int, n_sample: int, n_ct: int, sample_size=SAMPLE_SIZE) -> dict:
    """Training studies (sample-sized, labelled) and held-out test studies (sample- and CT-sized).

    Reused when ``root`` already holds the same request (``spec.json``), e.g. across smoke runs.
    """
    spec = {"train": n_train, "sample": n_sample, "ct": n_ct, "seeds": SEEDS,
            "sizes": {"sample": sample_size, "ct": CT_SIZE, "warmup": WARMUP_SIZE}}
    spec = json.loads(json.dumps(spec))
    done = root / "spec.json"
    if not (done.exists() and json.loads(done.read_text()) == spec):
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.time()
        generate_datastore(root / "train", n_train, 0, seed=SEEDS["train"], shape=SAMPLE_SIZE[0],
                           spacing=SAMPLE_SIZE[1], prefix="train")
        # Test studies are written *with* labels into a truth folder; the servers get the images only.
        for kind, n in (("sample", n_sample), ("ct", n_ct)):
            if n:
                shape, spacing = sample_size if kind == "sample" else CT_SIZE
                generate_datastore(root / f"truth-{kind}", n, 0, seed=SEEDS[kind], shape=shape, spacing=spacing,
                                   prefix=f"test{kind}")
        # A small study for the discarded first request of each server (loads the models): the stock
        # app needs minutes per sample-sized study on 2 cores, a warm-up on one would waste them.
        generate_datastore(root / "warmup", 1, 0, seed=SEEDS["warmup"], shape=WARMUP_SIZE[0], spacing=WARMUP_SIZE[1],
                           prefix="warmup")
        log(f"generated data in {time.time() - t0:.0f} s")
        done.write_text(json.dumps(spec))
    tests = []
    for kind in ("sample", "ct"):
        folder = root / f"truth-{kind}"
        if folder.exists():
            tests += [(kind, p.name[: -len(".nii.gz")], p, folder / "labels" / "final" / p.name)
                      for p in sorted(folder.glob("*.nii.gz"))]
    return {"train": root / "train", "tests": tests, "warmup": root / "warmup" / "warmup_000.nii.gz"}


# Our server uses the GPU when there is one, like the stock app (which picks CUDA by itself).
SERVE_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def infer_both(a, work: Path, tests, warmup: Path, stock_app: Path, our_models: Path) -> tuple[dict, dict]:
    """Both trained apps, each in a fresh server, measured on ``tests`` with the same client."""
    log("inference: stock")
    stock_test = work / "stock-test"
    shutil.rmtree(stock_test, ignore_errors=True)  # a re-measurement on another test set starts clean
    server = localserver.start_server(images_only(tests, stock_test, warmup), work / "stock-infer.log",
                                      stock_conf(), app_dir=stock_app)
    try:
        with GpuMonitor() as gpu:
            stock_inf = measure_server(server, "segmentation", tests, work / "stock-out", a.stock_repeats,
                                       {"sample": a.stock_cap, "ct": a.stock_cap_ct})
        stock_inf["gpu"] = gpu.summary()
    finally:
        server.stop()
    log("inference: ours")
    return stock_inf, measure_ours(a, work / "ours-infer", our_models, tests, warmup)


def measure_ours(a, folder: Path, weights: Path, tests, warmup: Path) -> dict:
    """Our app with the model files of ``weights``, in a fresh server on the test images, measured."""
    shutil.rmtree(folder, ignore_errors=True)  # a re-measurement on another test set starts clean
    server = start_cascade_server(images_only(tests, folder / "studies", warmup), folder, SERVE_DEVICE, weights)
    try:
        with GpuMonitor() as gpu:
            result = measure_server(server, "cascade", tests, folder / "out", a.repeats)
        result["gpu"] = gpu.summary()
    finally:
        server.stop()
    return result


def images_only(tests, dest: Path, warmup: Path) -> Path:
    """A studies folder holding the test images only (no labels: nothing to leak to the servers)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(warmup, dest / warmup.name)
    for _, name, image, _ in tests:
        shutil.copy(image, dest / f"{name}.nii.gz")
    return dest


def copy_studies(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".*", "datastore_v2.json", "truth.json"))
    return dest


# ------------------------------------------------------------------------------------- training
def train_stock(app: Path, studies: Path, work: Path, minutes: float) -> dict:
    """Train the stock `segmentation` model through its own /train endpoint for ``minutes`` of wall time."""
    from monailabel.client import MONAILabelClient

    server = localserver.start_server(studies, work / "stock-train.log", stock_conf(), app_dir=app)
    polls = []
    try:
        client = MONAILabelClient(server.url, tmpdir=str(work / "client"))
        t0 = time.time()
        client.train_start("segmentation", dict(STOCK_TRAIN_REQUEST))  # the client adds client_id
        deadline = t0 + minutes * 60
        while time.time() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.time())))
            stats = (client.info().get("train_stats") or {}).get("segmentation") or {}
            if stats.get("epoch"):
                polls.append({"t": round(time.time() - t0, 1), "epoch": stats["epoch"],
                              "val": (stats.get("eval") or stats.get("train") or {}).get("metrics", {}),
                              "best_metric": stats.get("best_metric")})
        client.train_stop()
        wall = time.time() - t0
        time.sleep(2)
        stats = (client.info().get("train_stats") or {}).get("segmentation") or {}
    finally:
        server.stop()
    return {**summarise_stock_training(polls, stats, wall, app), "epoch_s_from_log": stock_epoch_times(work / "stock-train.log")}


def stock_epoch_times(path: Path) -> list[float]:
    """Epoch durations the stock trainer (ignite) logs: ``Epoch[k] Complete. Time taken: HH:MM:SS.fff``."""
    out = []
    for m in re.finditer(r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([0-9.]+)", path.read_text(errors="replace")):
        out.append(round(int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4)), 1))
    return out


def summarise_stock_training(polls: list[dict], stats: dict, wall: float, app: Path) -> dict:
    # An epoch's stats are published when its validation ends: the first poll that shows epoch k
    # bounds the end of epoch k to within the poll interval (5 s).
    first_seen: dict[int, float] = {}
    for p in polls:
        first_seen.setdefault(p["epoch"], p["t"])
    epochs = sorted(first_seen)
    intervals = [first_seen[b] - first_seen[a] for a, b in zip(epochs, epochs[1:]) if b == a + 1]
    curve = []
    seen = set()
    for p in polls:
        if p["epoch"] in seen:
            continue
        seen.add(p["epoch"])
        v = p["val"]  # validation metrics, or the training ones (val_split 0): prefix val_ / train_
        pre = "val" if any(k.startswith("val_") for k in v) else "train"
        lesion = [v.get(f"{pre}_{n}_mean_dice") for n in STOCK_NAMES[1:]]
        curve.append({"epoch": p["epoch"], "t_s": p["t"], "metric_on": pre,
                      "organ_val_dice": v.get(f"{pre}_{STOCK_NAMES[0]}_mean_dice"),
                      "lesion_val_dice_mean_of_classes": (float(np.mean(lesion)) if all(x is not None for x in lesion)
                                                          else None),
                      "val_mean_dice": v.get(f"{pre}_mean_dice")})
    published = app / "model" / "segmentation.pt"
    return {
        "wall_s": round(wall, 1),
        "epochs_done": max(epochs) if epochs else 0,
        "first_epoch_end_s": first_seen.get(1),
        "epoch_s_median": statistics.median(intervals) if intervals else None,
        "epoch_s_mean_incl_startup": (first_seen[max(epochs)] / max(epochs)) if epochs else None,
        "curve": curve,
        "final_stats": stats,
        "model_published": published.exists(),
    }


# Our label names for the stock app. Its config numbers `labels` from 1 in the given order (liver 1,
# lesion benign 2, lesion malignant 3: exactly our contract values, so the stored labels need no
# remapping). Spaces become underscores: the `monailabel` launcher passes its arguments on unquoted
# (`$*`), so a name with a space cannot be given on its command line.
STOCK_NAMES = [n.replace(" ", "_") for n in (CONTRACT.organ, *CONTRACT.lesion_classes)]


# What Slicer's Train button sends resolves each option list of the trainer's config to one value; a
# bare REST call would pass the lists through and the trainer would then fall back to an uncached
# Dataset. We pick the cached options the issue asks for (CacheDataset, ThreadDataLoader) and enough
# epochs that only the time budget stops it; everything else stays at the trainer's defaults.
# No validation split: on 2 cores one validation pass of its 96^3 sliding window over a single organ
# takes minutes, and without it every epoch publishes a model (best training Dice) -- the best chance
# the baseline has to publish anything within the budget.
STOCK_TRAIN_REQUEST = {"max_epochs": 1000, "val_split": 0.0, "dataset": "CacheDataset",
                       "dataloader": "ThreadDataLoader", "tracking": "None"}


def stock_conf() -> dict:
    return {"models": "segmentation", "labels": ",".join(STOCK_NAMES), "use_pretrained_model": "false", "sam2": "false"}


EPOCH_LINE = re.compile(r"\[(organ|lesion)\] epoch (\d+)/\d+ loss [0-9.]+(?: val Dice ([0-9.]+))? \((\d+)s\)")


def run_cli(args: list[str], log_path: Path) -> tuple[float, list[str]]:
    t0 = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    log_path.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.time() - t0, proc.stdout.splitlines()


def train_ours(studies: Path, model_dir: Path, work: Path, minutes: float, organ_share: float, classifier: str) -> dict:
    """Classifier head (deep features, or the committed head), then organ, then lesion, all from cold.

    Budget: whatever the classifier took is subtracted; the organ stage gets ``organ_share`` of the
    rest, the lesion stage what is left after the organ stage actually finished.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    budget = minutes * 60
    out: dict = {"budget_s": budget}
    if classifier == "trained":
        wall, _ = run_cli(["-m", "radcascade.classifier_training", "--studies", str(studies), "--mode", "features",
                           "--out", str(model_dir / "classifier.pt")], work / "ours-classifier.log")
        stats = json.loads((model_dir / "classifier.stats.json").read_text())
        out["classifier"] = {"wall_s": round(wall, 1), "mode": "features (frozen ImageNet EfficientNet-Lite0 + logreg)",
                             "val_auc": stats.get("val_auc"), "train_lesions": stats.get("train_lesions")}
    else:
        install_weights(model_dir, files=("classifier.pt",))
        out["classifier"] = {"wall_s": 0.0, "mode": "committed head apps/radcascade/pretrained/classifier.pt"}
    left = budget - out["classifier"]["wall_s"]
    # The trainer checks its budget after each epoch (and counts data preparation): stop a little early
    # so the overshoot of the last epoch and the interpreter start stay inside the share.
    slack_s = 20.0
    for stage in ("organ", "lesion"):
        share = left * organ_share if stage == "organ" else left
        max_min = max(0.05, (share - slack_s) / 60)
        wall, lines = run_cli(["-m", "radcascade.training", "--studies", str(studies), "--out", str(model_dir),
                               "--stages", stage, "--epochs", "1000", "--max-minutes", f"{max_min:.3f}", "--cold"],
                              work / f"ours-{stage}.log")
        curve = [{"epoch": int(m.group(2)), "t_s": float(m.group(4)),
                  "val_dice": float(m.group(3)) if m.group(3) else None}
                 for m in (EPOCH_LINE.search(l) for l in lines) if m and m.group(1) == stage]
        stats = json.loads((model_dir / f"{stage}.stats.json").read_text())
        times = [c["t_s"] for c in curve]
        intervals = [b - a for a, b in zip(times, times[1:])]
        out[stage] = {"wall_s": round(wall, 1), "max_minutes": round(max_min, 3), "epochs_done": stats["epochs_done"],
                      "best_val_dice": stats["best_metric"], "best_epoch": stats["best_metric_epoch"],
                      "first_epoch_end_s": times[0] if times else None,
                      "epoch_s_median": statistics.median(intervals) if intervals else None, "curve": curve}
        left -= wall
    out["wall_s"] = round(sum(out[k]["wall_s"] for k in ("classifier", "organ", "lesion")), 1)
    return out


def time_to_target(curve: list[dict], key: str, target: float) -> float | None:
    for c in curve:
        if c.get(key) is not None and c[key] >= target:
            return c["t_s"]
    return None


# ------------------------------------------------------------------------------------ inference
def measure_server(server: localserver.LocalServer, model: str, tests, work: Path, repeats: int,
                   caps: dict[str, float] | None = None) -> dict:
    """One discarded warm-up request (a small study), then each test study ``repeats`` times (median kept).

    A request still running after ``caps[kind]`` seconds is recorded as "more than that" and the server
    is killed (its handler blocks the event loop: nothing else can be asked of it); the studies after it
    are not measured (listed under ``skipped``).
    """
    from monailabel.client import MONAILabelClient

    (work / "client").mkdir(parents=True, exist_ok=True)
    client = MONAILabelClient(server.url, tmpdir=str(work / "client"))
    t0 = time.perf_counter()
    params = {"fresh": True} if model == "cascade" else {}  # ours would answer a repeat from the stored result
    client.infer(model, "warmup_000", params)
    out = {"warmup_s": time.perf_counter() - t0, "studies": {}, "capped": [], "skipped": []}
    for i, (kind, name, _, _) in enumerate(tests):
        cap_s = (caps or {}).get(kind)
        walls, got = [], None
        for _ in range(repeats):
            box: dict = {}

            def call():
                try:
                    box["res"] = client.infer(model, name, params)
                except Exception as e:  # noqa: BLE001 - reported below
                    box["error"] = e

            t0 = time.perf_counter()
            th = threading.Thread(target=call, daemon=True)
            th.start()
            th.join(cap_s)
            if th.is_alive():
                out["capped"].append({"study": name, "kind": kind, "more_than_s": cap_s,
                                      "peak_mb_at_cap": server.peak_memory_mb()})
                log(f"  {model} {name}: still running after {cap_s:.0f} s: stopping the server")
                kill_now(server)
                out["peak_mb"] = out["capped"][-1]["peak_mb_at_cap"]
                out["skipped"] = [t[1] for t in tests[i + 1:]]
                return out
            if "error" in box:
                raise box["error"]
            walls.append(time.perf_counter() - t0)
            got = box["res"]
        label_file, res = got
        result = decode_result(res)
        keep = work / "labels" / f"{name}.nii.gz"
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(label_file, keep)
        out["studies"][name] = {"kind": kind, "end_to_end_s": statistics.median(walls), "walls_s": walls,
                                "latencies": result.get("latencies", {}), "label": str(keep), "result": result}
        log(f"  {model} {name}: {statistics.median(walls):.2f} s")
    out["peak_mb"] = server.peak_memory_mb()
    return out


def kill_now(server: localserver.LocalServer) -> None:
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.process.wait(30)


def label_array(path: str, reference: Path) -> np.ndarray:
    """The returned label as an (x, y, z) array on the reference image's grid (resampled in physical
    space, nearest neighbour, if the server wrote another geometry)."""
    pred = sitk.ReadImage(str(path))
    ref = sitk.ReadImage(str(reference))
    same = (pred.GetSize() == ref.GetSize() and np.allclose(pred.GetSpacing(), ref.GetSpacing(), atol=1e-3)
            and np.allclose(pred.GetOrigin(), ref.GetOrigin(), atol=1e-2)
            and np.allclose(pred.GetDirection(), ref.GetDirection(), atol=1e-4))
    if not same:
        pred = sitk.Resample(pred, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(pred).transpose(2, 1, 0)


def lesion_detection_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[dict, np.ndarray]:
    """Lesion-wise detection of the lesion values of ``pred`` against ``truth`` (the matching of
    :func:`radcascade.evaluation.lesion_detection`): the counts a report sums, and per true lesion
    (numbered as ``scipy.ndimage.label`` numbers them, 26-connectivity) whether it was found."""
    match = match_lesions(pred >= FIRST_LESION_VALUE, truth >= FIRST_LESION_VALUE, MIN_IOU)
    d = match.detection()
    return ({"truth_lesions": d.true_lesions, "found": d.detected, "pred_components": d.predicted_lesions,
             "true_components": d.predicted_lesions - d.false_positives}, match.true_detected)


def class_scores(pred: np.ndarray, truth: np.ndarray, detected: np.ndarray, findings: list[dict] | None):
    """Per detected truth lesion: true class index and a malignancy score.

    Ours: the classifier's probability of the second class for the predicted lesion overlapping it most.
    Stock: the fraction of its predicted lesion voxels inside the lesion that it labelled with the
    second class's value (its per-voxel classes are all it has)."""
    y, score = [], []
    second = FIRST_LESION_VALUE + 1
    p_mask = pred >= FIRST_LESION_VALUE
    structure = np.ones((3, 3, 3), bool)
    t_comp, _ = ndimage.label(truth >= FIRST_LESION_VALUE, structure)
    p_comp, _ = ndimage.label(p_mask, structure) if findings is not None else (None, 0)
    for k in np.flatnonzero(detected) + 1:
        region = t_comp == k
        true_cls = int(np.bincount(truth[region]).argmax()) - FIRST_LESION_VALUE
        if findings is None:
            s = float((pred[region] == second).sum() / max(1, p_mask[region].sum()))
        else:
            comps = p_comp[region]
            comp = int(np.bincount(comps[comps > 0]).argmax())
            centre = np.array(ndimage.center_of_mass(p_comp == comp))
            best = min(findings, key=lambda f: np.linalg.norm(np.array(f["centroid_voxel"]) - centre), default=None)
            if best is None or not best.get("probabilities"):
                continue
            s = float(best["probabilities"][CONTRACT.lesion_classes[1]])
        y.append(true_cls)
        score.append(s)
    return y, score

def evaluate(measured: dict, tests, ours: bool) -> dict:
    truth_of = {name: (image, label) for _, name, image, label in tests}
    per_study = {}
    ys, scores = [], []
    for name, m in measured["studies"].items():
        image, truth_path = truth_of[name]
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path))).transpose(2, 1, 0)
        pred = label_array(m["label"], image)
        det, detected = lesion_detection_counts(pred, truth)
        y, s = class_scores(pred, truth, detected, m["result"].get("lesions", []) if ours else None)
        ys += y
        scores += s
        per_study[name] = {
            "kind": m["kind"], "organ_dice": dice(pred >= 1, truth >= 1),
            "lesion_dice": dice(pred >= FIRST_LESION_VALUE, truth >= FIRST_LESION_VALUE),
            "lesion_inter": int(((pred >= 2) & (truth >= 2)).sum()), "lesion_sum": int((pred >= 2).sum() + (truth >= 2).sum()),
            **det,
        }
    cm = classification_metrics(ys, np.stack([1 - np.array(scores), np.array(scores)], 1) if ys else [], 2)
    return {"per_study": per_study, "classification": cm.to_json()}


def summarise(side: dict, kind: str) -> dict:
    studies = {n: s for n, s in side["eval"]["per_study"].items() if s["kind"] == kind}
    capped = [c for c in side["infer"].get("capped", []) if c["kind"] == kind]
    if capped and not studies:
        return {"n": 0, "capped": len(capped), "latency_more_than_s": min(c["more_than_s"] for c in capped),
                "peak_mb_at_cap": max((v for c in capped for v in c["peak_mb_at_cap"].values()), default=None)}
    if not studies:
        return {}
    lat = [side["infer"]["studies"][n]["end_to_end_s"] for n in studies]
    inter = sum(s["lesion_inter"] for s in studies.values())
    total = sum(s["lesion_sum"] for s in studies.values())
    t_les = sum(s["truth_lesions"] for s in studies.values())
    p_les = sum(s["pred_components"] for s in studies.values())
    stage_lat = {}
    for n in studies:
        for k, v in side["infer"]["studies"][n]["latencies"].items():
            if isinstance(v, (int, float)):
                stage_lat.setdefault(k, []).append(v)
    return {
        "n": len(studies),
        "latency_s_median": statistics.median(lat), "latency_s_mean": statistics.mean(lat),
        "stage_latency_s_median": {k: statistics.median(v) for k, v in stage_lat.items()},
        "organ_dice_mean": statistics.mean(s["organ_dice"] for s in studies.values()),
        "lesion_dice_pooled": 1.0 if total == 0 else 2 * inter / total,
        "lesion_dice_mean": statistics.mean(s["lesion_dice"] for s in studies.values()),
        "lesion_recall": (sum(s["found"] for s in studies.values()) / t_les) if t_les else None,
        "lesion_precision": (sum(s["true_components"] for s in studies.values()) / p_les) if p_les else None,
        "truth_lesions": t_les, "pred_components": p_les, "capped": len(capped),
    }


def build_parser(results: Path) -> argparse.ArgumentParser:
    """The command line of ``benchmarks/stock_comparison.py`` (results in ``results`` by default)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-time budget T per app")
    p.add_argument("--train", type=int, default=6, help="labelled sample-sized training studies")
    p.add_argument("--sample-test", type=int, default=2)
    p.add_argument("--ct-test", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed requests per test study, ours (median kept)")
    p.add_argument("--stock-repeats", type=int, default=1, help="timed requests per test study, stock app")
    p.add_argument("--stock-cap", type=float, default=900.0, help="stop a stock request (sample-sized) after this many s")
    p.add_argument("--stock-cap-ct", type=float, default=150.0, help="stop a stock request (CT-sized) after this many s")
    p.add_argument("--sample-shape", type=int, nargs=3, default=None, help="smoke runs: smaller 'sample' test studies")
    p.add_argument("--organ-share", type=float, default=0.3, help="share of our UNet budget for the organ stage")
    p.add_argument("--classifier", choices=("trained", "pretrained"), default="trained",
                   help="trained: deep-features head on the training studies, inside T; pretrained: committed head")
    p.add_argument("--target-organ-dice", type=float, default=0.9)
    p.add_argument("--target-lesion-dice", type=float, default=0.5)
    p.add_argument("--data", type=Path, default=None, help="keep/reuse generated studies here")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=results)
    p.add_argument("--resume", action="store_true", help="only evaluate and report the run kept in --work")
    p.add_argument("--reinfer", action="store_true",
                   help="keep the trained models of the run in --work, measure both apps again on the test set "
                        "asked for now (e.g. more test studies)")
    p.add_argument("--reference-row", action="store_true",
                   help="also measure our app with the committed starting weights (context, not equal budget)")
    p.add_argument("--name", default="stock_comparison",
                   help="results file stem in --out (keep runs with different budgets side by side)")
    p.add_argument("--shared-note", default="", help="a line for the .md, e.g. that the machine was shared")
    p.add_argument("--from-json", type=Path, default=None, metavar="JSON",
                   help="run nothing: write the .md and .png of this results file again (beside it)")
    return p


def command_line(argv: list[str]) -> str:
    """How a run is recorded: the script and its arguments (the shared note, printed in full, as ``...``)."""
    args = list(argv)
    if "--shared-note" in args[:-1]:  # the note is printed in full below the command
        args[args.index("--shared-note") + 1] = "..."
    return f".venv/bin/python benchmarks/stock_comparison.py {' '.join(shlex.quote(x) for x in args)}".strip()


def recorded_options(res: dict) -> argparse.Namespace:
    """The options of the invocation that produced ``res`` (the last one: a re-measurement's test set)."""
    words = shlex.split(res.get("report_rendered_with") or res["command"])
    a = build_parser(Path(".")).parse_known_args(words[words.index("benchmarks/stock_comparison.py") + 1:])[0]
    a.shared_note = res.get("shared_note", "")
    return a


# The state of a run kept in --work (for --resume / --reinfer): what training and measuring produced.
STATE_KEYS = ("stock_train", "ours_train", "stock_inf", "ours_inf", "run_wall", "loads")


def save_state(path: Path, state: dict) -> None:
    path.write_text(json.dumps({k: state[k] for k in STATE_KEYS}, default=float))


def load_state(path: Path) -> dict:
    return json.loads(path.read_text())


def run(a: argparse.Namespace, command: str) -> dict:
    """Train and measure both apps (or re-measure / re-evaluate a kept run) as ``a`` asks; the results."""
    work = a.work or Path(tempfile.mkdtemp(prefix="radcascade-stock-"))
    work.mkdir(parents=True, exist_ok=True)
    sample_size = (tuple(a.sample_shape), SAMPLE_SIZE[1]) if a.sample_shape else SAMPLE_SIZE
    data = make_data(a.data or work / "data", a.train, a.sample_test, a.ct_test, sample_size)
    tests = data["tests"]
    log(f"{len(tests)} test studies, work folder {work}")

    state_file = work / "state.json"
    if (a.resume or a.reinfer) and not state_file.exists():
        raise SystemExit(f"--resume/--reinfer: no kept run in {work} (no {state_file.name}); run without them first")
    if a.resume:  # re-evaluate / re-report a finished run (its labels are in --work)
        state = load_state(state_file)
    elif a.reinfer:  # the trained models of a kept run, measured on the current test set
        state = load_state(state_file)
        t_run, load_start = time.time(), os.getloadavg()
        state["stock_inf"], state["ours_inf"] = infer_both(a, work, tests, data["warmup"], work / "stock-radiology",
                                                           work / "our-model")
        state["run_wall"] = round(state["run_wall"] + time.time() - t_run, 1)  # the kept run's training + this
        state["loads"] = {"start": load_start, "end": os.getloadavg()}
        save_state(state_file, state)
    else:
        state = train_and_measure(a, work, data)
        save_state(state_file, state)

    rendered_with = None
    previous = a.out / f"{a.name}.json"
    if (a.resume or a.reinfer) and previous.exists():  # keep the training run's command; say how this was made
        rendered_with, command = command, json.loads(previous.read_text())["command"]
    reference = None
    if a.reference_row:
        # Context, not part of the equal-budget comparison: our app with the committed starting weights
        # (trained ~50 min on 32 other generated studies), on the same test studies.
        log("inference: ours with the committed starting weights (reference row)")
        reference = measure_ours(a, work / "reference-infer", PRETRAINED, tests, data["warmup"])
    return results(a, command, rendered_with, state, tests, sample_size, reference)


def train_and_measure(a: argparse.Namespace, work: Path, data: dict) -> dict:
    """Both apps trained from cold for ``a.minutes`` each, then measured on the test studies."""
    # The stock app, unmodified, in a scratch copy (its model/ and logs are written beside it).
    stock_app = work / "stock-radiology"
    shutil.copytree(stock_app_dir(), stock_app, ignore=shutil.ignore_patterns("__pycache__", "model", "logs", "bin"))
    t_run = time.time()
    load_start = os.getloadavg()
    log(f"training the stock segmentation model for {a.minutes} min")
    with GpuMonitor() as gpu:
        stock_train = train_stock(stock_app, copy_studies(data["train"], work / "stock-train"), work, a.minutes)
    stock_train["gpu"] = gpu.summary()
    log(f"stock: {stock_train['epochs_done']} epochs in {stock_train['wall_s']} s")
    our_models = work / "our-model"
    log(f"training ours for {a.minutes} min")
    with GpuMonitor() as gpu:
        ours_train = train_ours(copy_studies(data["train"], work / "our-train"), our_models, work, a.minutes,
                                a.organ_share, a.classifier)
    ours_train["gpu"] = gpu.summary()
    log(f"ours: organ {ours_train['organ']['epochs_done']} epochs, lesion {ours_train['lesion']['epochs_done']} epochs, "
        f"{ours_train['wall_s']} s")
    stock_inf, ours_inf = infer_both(a, work, data["tests"], data["warmup"], stock_app, our_models)
    return {"stock_train": stock_train, "ours_train": ours_train, "stock_inf": stock_inf, "ours_inf": ours_inf,
            "run_wall": round(time.time() - t_run, 1), "loads": {"start": load_start, "end": os.getloadavg()}}


def results(a: argparse.Namespace, command: str, rendered_with: str | None, state: dict, tests, sample_size,
            reference: dict | None) -> dict:
    """The results record: both apps' measurements evaluated against the truth, summaries, targets."""
    stock_train, ours_train = state["stock_train"], state["ours_train"]
    res = {
        **meta(command, minutes=a.minutes, detection_criterion=DETECTION_CRITERION,
               train_studies=a.train, seeds=SEEDS, sizes={"sample": sample_size, "ct": CT_SIZE}),
        "training": {"stock": stock_train, "ours": ours_train},
        "stock": {"name": "stock radiology `segmentation`", "infer": state["stock_inf"]},
        "ours": {"name": "radcascade `cascade`", "infer": state["ours_inf"]},
    }
    if a.shared_note:
        res["shared_note"] = a.shared_note
    if rendered_with:
        res["report_rendered_with"] = rendered_with
    sides = ["stock", "ours"]
    if reference:
        res["reference"] = {"name": "radcascade, committed starting weights (not equal budget)", "infer": reference}
        sides.append("reference")
    for side in sides:
        res[side]["eval"] = evaluate(res[side]["infer"], tests, ours=side != "stock")
        res[side]["summary"] = {k: summarise(res[side], k) for k in ("sample", "ct")}
        res[side]["peak_mb"] = max(res[side]["infer"]["peak_mb"].values(), default=None)
        for st in res[side]["infer"]["studies"].values():
            st.pop("result", None)
            st.pop("label", None)
    res["run_wall_s"] = state["run_wall"]
    res["load_average"] = state["loads"]
    res["targets"] = targets(res)
    res["time_to_target"] = {
        "stock_organ_s": time_to_target(stock_train["curve"], "organ_val_dice", a.target_organ_dice),
        "stock_lesion_s": time_to_target(stock_train["curve"], "lesion_val_dice_mean_of_classes", a.target_lesion_dice),
        "ours_organ_s": time_to_target(
            [{**c, "t_s": c["t_s"] + ours_train["classifier"]["wall_s"]} for c in ours_train["organ"]["curve"]],
            "val_dice", a.target_organ_dice),
        "ours_lesion_s": time_to_target(
            [{**c, "t_s": c["t_s"] + ours_train["classifier"]["wall_s"] + ours_train["organ"]["wall_s"]}
             for c in ours_train["lesion"]["curve"]], "val_dice", a.target_lesion_dice),
    }
    return res


def targets(res: dict) -> dict:
    """Issue 5: latency <= 1/3 of the baseline's at equal or better lesion Dice (per volume size)."""
    out = {}
    for kind in ("sample", "ct"):
        s, o = res["stock"]["summary"].get(kind), res["ours"]["summary"].get(kind)
        if not s or not o or not o.get("n"):
            continue
        if s.get("n"):
            ratio, bound = o["latency_s_median"] / s["latency_s_median"], False
        else:  # the baseline did not finish: its latency is only bounded below
            ratio, bound = o["latency_s_median"] / s["latency_more_than_s"], True
        d = {"latency_ratio": ratio, "ratio_is_upper_bound": bound, "latency_met": ratio <= 1 / 3,
             "lesion_dice_ours": o["lesion_dice_pooled"], "lesion_dice_stock": s.get("lesion_dice_pooled")}
        d["lesion_dice_met"] = None if d["lesion_dice_stock"] is None else d["lesion_dice_ours"] >= d["lesion_dice_stock"]
        d["met"] = bool(d["latency_met"] and d["lesion_dice_met"]) if d["lesion_dice_met"] is not None else None
        # 0 >= 0 is "equal", but says nothing: neither app segmented any lesion.
        d["lesion_dice_trivial"] = d["lesion_dice_stock"] == 0 and d["lesion_dice_ours"] == 0
        out[kind] = d
    return out
