"""The benchmarks' logic (radcascade.experiments) on tiny inputs: seconds each, no server."""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from radcascade.evaluation import binary_auroc, lesion_detection
from radcascade.experiments import annotation_loop as al
from radcascade.experiments import common
from radcascade.experiments import stock_comparison as sc
from radcascade.experiments import stock_report
from radcascade.experiments import transfer as tr
from radcascade.experiments import uncertainty_signal as us
from radcascade.uncertainty import StudyUncertainty

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# A 1-epoch lesion model paints thousands of specks, and classifying each takes minutes on a CPU:
# the tiny loops keep only lesions of 2 ml and more.
FEW_LESIONS_ML = 2.0


# -- common -------------------------------------------------------------------------------------------
def test_common_helpers():
    assert common.mean_std([1.0, None, 3.0]) == "2.000 ± 1.000" and common.mean_std([None]) == "-"
    assert common.parse_gpu_sample("87, 10240\n3, 1\n") == (87.0, 10240.0)
    assert common.decode_result(b'{"a": 1}') == {"a": 1} == common.decode_result('{"a": 1}')
    assert common.decode_result(None) == {}
    runs = [{"latencies": {"load": 1.0, "total": 3.0}}, {"latencies": {"load": 2.0, "total": 5.0}},
            {"latencies": {"load": 9.0, "total": 4.0}}]
    assert common.median_stages(runs, ("load", "organ", "total")) == {"load": 2.0, "organ": None, "total": 4.0}
    record = common.meta("cmd", minutes=3)
    assert record["command"] == "cmd" and record["minutes"] == 3 and record["machine"]
    with common.GpuMonitor(interval_s=0.01) as gpu:  # no nvidia-smi here: samples nothing, says so
        pass
    assert gpu.summary() is None or gpu.summary()["samples"] >= 1


def test_install_weights_copies_only_the_files_present(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "organ.pt").write_bytes(b"x")
    out = common.install_weights(tmp_path / "model", src)
    assert sorted(p.name for p in out.iterdir()) == ["organ.pt"]


# -- stock comparison -----------------------------------------------------------------------------------
def _cube(shape, boxes) -> np.ndarray:
    a = np.zeros(shape, np.uint8)
    for value, sl in boxes:
        a[sl] = value
    return a


def test_stock_comparison_counts_lesions_with_the_shared_definition():
    """A big prediction covering 15% of a true lesion: found under the old >= 10%-overlap rule,
    not under IoU >= 0.1 (the definition every benchmark now reports)."""
    truth = _cube((40, 40, 20), [(2, np.s_[5:15, 5:15, 2:12])])  # 1000 voxels
    pred = _cube((40, 40, 20), [(2, np.s_[5:20, 13:40, 2:12])])  # overlaps 150 of them, 4050 voxels
    counts, detected = sc.lesion_detection_counts(pred, truth)
    shared = lesion_detection(pred >= 2, truth >= 2)
    assert counts == {"truth_lesions": 1, "found": 0, "pred_components": 1, "true_components": 0}
    assert (shared.detected, shared.predicted_lesions, shared.false_positives) == (0, 1, 1)
    assert detected.tolist() == [False]
    good = _cube((40, 40, 20), [(2, np.s_[5:15, 5:15, 3:12])])
    assert sc.lesion_detection_counts(good, truth)[0]["found"] == 1


def test_stock_comparison_class_scores_for_both_apps():
    truth = _cube((40, 40, 20), [(2, np.s_[2:8, 2:8, 2:8]), (3, np.s_[20:26, 20:26, 10:16])])
    pred = _cube((40, 40, 20), [(2, np.s_[2:8, 2:8, 2:8]), (3, np.s_[20:26, 20:26, 10:13]),
                                (2, np.s_[20:26, 20:26, 13:16])])
    _, detected = sc.lesion_detection_counts(pred, truth)
    y, stock = sc.class_scores(pred, truth, detected, None)
    assert y == [0, 1] and stock == [0.0, 0.5]  # its malignant share of each lesion's predicted voxels
    benign, malignant = sc.CONTRACT.lesion_classes
    findings = [{"centroid_voxel": [4.5, 4.5, 4.5], "probabilities": {benign: 0.9, malignant: 0.1}},
                {"centroid_voxel": [22.5, 22.5, 12.5], "probabilities": {benign: 0.2, malignant: 0.8}}]
    y, ours = sc.class_scores(pred, truth, detected, findings)
    assert y == [0, 1] and ours == [0.1, 0.8]


def _write(array: np.ndarray, path: Path) -> Path:
    img = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    img.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(img, str(path))
    return path


def test_stock_comparison_evaluates_summarises_and_reports(tmp_path):
    truth = _cube((40, 40, 20), [(1, np.s_[:, :, :]), (2, np.s_[2:8, 2:8, 2:8]), (3, np.s_[20:26, 20:26, 10:16])])
    pred = _cube((40, 40, 20), [(1, np.s_[:, :, 1:]), (2, np.s_[2:8, 2:8, 2:8])])
    image = _write(np.zeros((40, 40, 20), np.int16), tmp_path / "img.nii.gz")
    tests = [("sample", "s0", image, _write(truth, tmp_path / "truth.nii.gz"))]
    study = {"kind": "sample", "end_to_end_s": 1.5, "walls_s": [1.5], "label": str(_write(pred, tmp_path / "p.nii.gz")),
             "latencies": {"organ": 0.5, "total": 1.2}, "result": {"lesions": []}}
    res = {"sizes": {"sample": [[40, 40, 20], [2.0, 2.0, 3.0]], "ct": [[4, 4, 4], [1, 1, 1]]}}
    for side, lat in (("stock", 30.0), ("ours", 1.5)):
        infer = {"studies": {"s0": {**study, "end_to_end_s": lat}}, "peak_mb": {1: 100.0}}
        res[side] = {"name": side, "infer": infer, "peak_mb": 100.0}
        res[side]["eval"] = sc.evaluate(infer, tests, ours=side == "ours")
        res[side]["summary"] = {k: sc.summarise(res[side], k) for k in ("sample", "ct")}
    s = res["ours"]["summary"]["sample"]
    assert s["truth_lesions"] == 2 and s["lesion_recall"] == 0.5 and s["lesion_precision"] == 1.0
    assert s["organ_dice_mean"] == pytest.approx(2 * 40 * 40 * 19 / (40 * 40 * 19 + 40 * 40 * 20))
    assert res["ours"]["summary"]["ct"] == {}
    assert "| ours | sample 40x40x20 @2x2x3mm (n=1) | 1.50 |" in stock_report.report(res)
    assert "organ 0.500, total 1.200" in stock_report.stage_table(res)
    target = sc.targets(res)["sample"]
    assert target["latency_ratio"] == 0.05 and target["latency_met"] and target["lesion_dice_met"]


STOCK_LOG = "x Epoch[1] Complete. Time taken: 00:01:02.500 y\nEpoch[2] Complete. Time taken: 01:00:00.000\n"


def test_stock_comparison_training_records():
    polls = [{"t": 10.0, "epoch": 1, "val": {"train_mean_dice": 0.4, **{f"train_{n}_mean_dice": 0.5 for n in sc.STOCK_NAMES}},
              "best_metric": 0.4},
             {"t": 14.0, "epoch": 1, "val": {}, "best_metric": 0.4},
             {"t": 25.0, "epoch": 2, "val": {f"val_{n}_mean_dice": 0.9 for n in sc.STOCK_NAMES}, "best_metric": 0.9}]
    out = sc.summarise_stock_training(polls, {"best_metric": 0.9}, 30.0, Path("/nonexistent"))
    assert (out["epochs_done"], out["first_epoch_end_s"], out["epoch_s_median"]) == (2, 10.0, 15.0)
    assert [c["metric_on"] for c in out["curve"]] == ["train", "val"] and not out["model_published"]
    assert sc.time_to_target(out["curve"], "organ_val_dice", 0.8) == 25.0
    assert sc.time_to_target(out["curve"], "organ_val_dice", 0.95) is None
    m = sc.EPOCH_LINE.search("[lesion] epoch 3/1000 loss 0.412 val Dice 0.250 (17s)")
    assert m.groups() == ("lesion", "3", "0.250", "17")
    assert sc.stock_conf()["labels"] == ",".join(sc.STOCK_NAMES) and " " not in sc.stock_conf()["labels"]


def test_stock_comparison_epoch_times_and_cli_runs(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(STOCK_LOG)
    assert sc.stock_epoch_times(log) == [62.5, 3600.0]
    wall, lines = sc.run_cli(["-c", "print('hello')"], tmp_path / "cli.log")
    assert lines == ["hello"] and wall > 0 and "hello" in (tmp_path / "cli.log").read_text()
    with pytest.raises(RuntimeError, match="failed"):
        sc.run_cli(["-c", "raise SystemExit(3)"], tmp_path / "bad.log")


def test_stock_comparison_data_state_and_command(tmp_path):
    data = sc.make_data(tmp_path / "data", 1, 1, 0, ((24, 24, 12), (6.0, 6.0, 8.0)))
    assert [t[:2] for t in data["tests"]] == [("sample", "testsample_000")] and data["warmup"].exists()
    assert sc.make_data(tmp_path / "data", 1, 1, 0, ((24, 24, 12), (6.0, 6.0, 8.0))) == data  # reused
    folder = sc.images_only(data["tests"], tmp_path / "images", data["warmup"])
    assert sorted(p.name for p in folder.iterdir()) == ["testsample_000.nii.gz", "warmup_000.nii.gz"]
    copied = sc.copy_studies(data["train"], tmp_path / "train")
    assert (copied / "labels" / "final").is_dir() and not (copied / "truth.json").exists()
    state = {"stock_train": {"curve": []}, "ours_train": {}, "stock_inf": {"peak_mb": {7: 1.0}}, "ours_inf": {},
             "run_wall": 3.0, "loads": {"start": (1.0, 1.0, 1.0), "end": (2.0, 2.0, 2.0)}}
    sc.save_state(tmp_path / "state.json", state)
    back = sc.load_state(tmp_path / "state.json")
    assert back["run_wall"] == 3.0 and back["stock_inf"]["peak_mb"] == {"7": 1.0}
    cmd = sc.command_line(["--minutes", "2", "--shared-note", "busy machine"])
    assert cmd == ".venv/bin/python benchmarks/stock_comparison.py --minutes 2 --shared-note ..."


@pytest.mark.parametrize("name", ["stock_comparison", "stock_comparison-30min"])
def test_stock_comparison_reports_regenerate_from_recorded_json(tmp_path, name):
    """The recorded tables come back from the JSON alone; those runs used the old overlap rule, and
    the regenerated report says so."""
    recorded = (RESULTS / f"{name}.md").read_text()
    res = json.loads((RESULTS / f"{name}.json").read_text())
    assert stock_report.report(res) in recorded and stock_report.stage_table(res) in recorded
    copy = tmp_path / f"{name}.json"
    shutil.copy(RESULTS / f"{name}.json", copy)
    md = stock_report.render_from_json(copy).read_text()
    assert stock_report.report(res) in md and "this run's own definition" in md and f"Plot: `{name}.png`" in md
    assert sc.recorded_options(res).minutes == res["minutes"]


# -- annotation loop ------------------------------------------------------------------------------------
def test_pool_indices_are_seeded_and_sized():
    a = al.screening_indices(3, initial=2, pool=10, fraction=0.5)
    assert a == al.screening_indices(3, 2, 10, 0.5) and len(a) == 5 and all(2 <= i < 12 for i in a)
    assert al.low_dose_indices(3, 2, 10, 0.0) == frozenset() and len(al.low_dose_indices(3, 2, 10, 0.3)) == 3
    assert al.case(Path("f"), "s").label == Path("f/labels/final/s.nii.gz")


def _uncertainty(v: float) -> StudyUncertainty:
    return StudyUncertainty(v, v, v, True, 1, (), v, v, v, v)


def test_select_follows_each_strategy():
    remaining = ["c", "a", "b"]
    scores = {"a": _uncertainty(0.1), "b": _uncertainty(0.9), "c": _uncertainty(0.5)}
    assert al.select("first", remaining, 2, random.Random(0), None, al.BENCHMARKED_DIVERSITY) == ["a", "b"]
    assert sorted(al.select("random", remaining, 3, random.Random(0), None, al.BENCHMARKED_DIVERSITY)) == ["a", "b", "c"]
    for strategy in ("epistemic", "tta-lesion", "combined-nodiv"):
        assert al.select(strategy, remaining, 2, random.Random(0), scores, al.BENCHMARKED_DIVERSITY) == ["b", "c"]


def _rows(seeds, strategies, round0=0.5):
    rows = []
    for seed in seeds:
        for strategy in strategies:
            for r in range(2):
                gain = 0.1 * r * (2 if strategy != "random" else 1)
                metrics = al.Evaluation(0.8 + gain / 10, round0 + gain, 0.5 + gain, 1.0 - gain, None)
                rows.append(al.Row(seed, strategy, r, 2 + r, [], r, 0, 1.0, 0.5, metrics))
    return rows


def test_tables_merge_and_re_render(tmp_path):
    record = {"command": "x", "machine": "m", "date": "2026-11-29", "minutes": 1.0, "seeds": [0], "initial": 2,
              "pool": 4, "per_round": 1, "rounds": 1, "test_studies": 2, "test_lesions": 3, "initial_epochs": 1,
              "epochs": 1, "lesion_free_pool": 0.5, "low_dose_pool": 0.0, "low_dose_test": 0.0,
              "strategies": ["random", "epistemic"], "torch_threads": 1}
    final, curve = al.summarise(_rows([0, 1], record["strategies"]), record["strategies"], 1)
    assert "| epistemic | 1.000 ± 0.000 (0/2) | 0.820 ± 0.000 (2/2) | 0.700 ± 0.000 (2/2) |" in final and "| random | lesion_dice |" in curve
    assert "| epistemic | lesion_dice | +0.100 ± 0.000, 2/2" in al.paired_table(_rows([0, 1], ["random", "epistemic"]),
                                                                             ["random", "epistemic"], 1)
    al.write_results(tmp_path / "a", record, _rows([0], record["strategies"]))
    al.write_results(tmp_path / "b", {**record, "seeds": [1]}, _rows([1], record["strategies"]))
    al.merge([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "ab")
    merged, rows = al.load_results(tmp_path / "ab.json")
    assert merged["seeds"] == [0, 1] and merged["merged_from"] == ["a.json", "b.json"] and len(rows) == 8
    assert (tmp_path / "ab.md").read_text() == al.markdown("ab", merged, rows)
    al.write_results(tmp_path / "c", {**record, "seeds": [1], "strategies": ["tta"]}, _rows([1], ["tta"], round0=0.4))
    with pytest.raises(SystemExit, match="round 0 of seed 1 differs"):
        al.merge([tmp_path / "b.json", tmp_path / "c.json"], tmp_path / "bc")


@pytest.mark.parametrize("name", ["active_learning-warm-screening", "active_learning-warm-screening-40epochs"])
def test_annotation_loop_reports_regenerate_from_recorded_json(name):
    record, rows = al.load_results(RESULTS / f"{name}.json")
    assert al.markdown(name, record, rows) == (RESULTS / f"{name}.md").read_text()


def test_a_tiny_annotation_loop_runs(tmp_path, monkeypatch):
    """One seed, two starting studies, one round of one pick, one epoch each: every step of the loop."""
    monkeypatch.setattr(al, "MIN_LESION_ML", FEW_LESIONS_ML)
    a = argparse.Namespace(seeds=[0], initial=2, pool=2, per_round=1, rounds=1, test=2, initial_epochs=1, epochs=1,
                           strategies=["first", "epistemic"], threads=1, lesion_free_pool=0.0, low_dose_pool=0.5,
                           low_dose_test=None, quick=False, name=None)
    al.apply_defaults(a)
    assert a.low_dose_test == 0.5 and al.default_stem_name(a) == "active_learning"
    record, rows = al.run(a, "cmd")
    assert [(r.strategy, r.round, r.labelled) for r in rows] == [("first", 0, 2), ("epistemic", 0, 2),
                                                                 ("first", 1, 3), ("epistemic", 1, 3)]
    assert rows[2].picked == ["s0_002"] and rows[0].metrics == rows[1].metrics
    assert all(0.0 <= r.metrics.organ_dice <= 1.0 and r.metrics.low_dose_organ_dice is not None for r in rows)
    al.write_results(tmp_path / "tiny", record, rows)
    assert al.load_results(tmp_path / "tiny.json")[1] == rows


# -- uncertainty signal ---------------------------------------------------------------------------------
def test_signal_statistics():
    assert binary_auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert binary_auroc([0.5, 0.5], [True, False]) == 0.5 and binary_auroc([1.0], [True]) is None
    assert us.spearman([1, 2, 3], [2, 4, 9]) == pytest.approx(1.0) and us.spearman([1, 1], [1, 2]) is None


def test_signal_report_regenerates_from_recorded_json():
    record = json.loads((RESULTS / "uncertainty_signal-lowdose-probe.json").read_text())
    assert us.markdown(record) == (RESULTS / "uncertainty_signal-lowdose-probe.md").read_text()


def test_a_tiny_signal_run(monkeypatch):
    monkeypatch.setattr(al, "MIN_LESION_ML", FEW_LESIONS_ML)
    a = argparse.Namespace(seeds=[0], initial=2, initial_epochs=1, pool=3, lesion_free_pool=0.34, low_dose_pool=0.34,
                           top=0.05, threads=1)
    per_seed = us.run(a)
    figures = per_seed[0]
    assert set(figures) == {*us.STORED, *(f"{s}-{k}-{g}" for s, k in us.STAGE_KINDS for g in ("mean", "peak"))}
    assert all(set(v) == {"auroc_lesion", "rho_lesion_err", "rho_organ_err", "auroc_low_dose"} for v in figures.values())
    assert "| organ-mc-peak |" in us.table(per_seed, low_dose=True)


# -- transfer -------------------------------------------------------------------------------------------
def test_transfer_pieces():
    from radcascade.classifier import LesionSample
    from radcascade.radiomics import feature_names, first_order_columns

    names = feature_names()
    column = first_order_columns(names)[0]  # the baseline looks at first-order features only
    rng = np.random.default_rng(0)

    def sample(study, label):
        values = rng.normal(size=len(names))
        values[column] = label * 10.0  # one feature separates the classes
        return LesionSample(study, label, np.zeros((1, 3, 4, 4), np.float32), values)

    samples = [sample(f"s{i}", i % 2) for i in range(8)] + [sample("s0", 0)]
    subset = tr.subset_by_study(samples, 3, seed=1)
    assert len({s.study for s in subset}) == 3 and subset == tr.subset_by_study(samples, 3, seed=1)
    assert all(s in subset for s in samples if s.study == subset[0].study)  # a study's lesions stay together
    auc, name = tr.one_feature_auc(samples[:6], samples[6:])
    assert auc == 1.0 and name == names[column]


def test_transfer_samples_carry_radiomics():
    from radcascade.patches import PatchConfig

    samples = tr.make_samples(5000, 1, PatchConfig(size=32, views=1), "pool", "default")
    assert samples and all(s.study == "pool000" and s.radiomics is not None for s in samples)
    assert samples[0].patches.shape == (1, 3, 32, 32)


def test_transfer_report_regenerates_from_recorded_json(tmp_path):
    for f in RESULTS.glob("transfer-*.json"):
        shutil.copy(f, tmp_path / f.name)
    tr.report(tmp_path)
    assert (tmp_path / "transfer.md").read_text() == (RESULTS / "transfer.md").read_text()


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = np.round(rng.random(40), 1)  # ties included
    positive = rng.random(40) > 0.5
    assert binary_auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))


def test_training_scaling_measures_each_process_count_and_rerenders(tmp_path):
    from radcascade.experiments import training_scaling as ts
    from radcascade.networks import TINY_UNET

    rows = ts.measure([1, 2], studies=2, epochs=1, global_batch=2, work=tmp_path, spec=TINY_UNET)
    assert [r.processes for r in rows] == [1, 2] and all(r.seconds > 0 and r.patches_per_s > 0 for r in rows)
    text = ts.write(rows, {"command": "x"}, tmp_path / "out" / "scaling")
    assert "| 2 |" in text
    again, meta = ts.load(tmp_path / "out" / "scaling.json")
    assert again == rows and ts.render(again, meta) == text
    with pytest.raises(ValueError, match="does not split"):
        ts.measure([3], studies=1, epochs=1, global_batch=2, work=tmp_path / "w")
