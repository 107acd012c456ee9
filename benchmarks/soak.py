"""Soak run: N clients for M minutes against a real server on 127.0.0.1 (loopback only, bounded).

Clients mix `/infer/cascade`, label submissions (Slicer segment order, remapped by name) and
next-sample requests while a trainer retrains organ, lesion and classifier in turn. Afterwards
every label and model file is checked: readable, valid, and each label equal to the last one the
server acknowledged. Prints a table and writes ``benchmarks/results/soak.{json,md}``.

    .venv/bin/python benchmarks/soak.py --clients 4 --minutes 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from radcascade import localserver
from radcascade.checkpoints import read_checkpoint
from radcascade.classifier import load_classifier
from radcascade.labels import LabelContract
from radcascade.sample_data import generate_datastore
from radcascade.volumes import read_geometry, read_label

HERE = Path(__file__).resolve().parent
SLICER_ORDER = {"lesion malignant": 1, "liver": 2, "lesion benign": 3}


def status_of(exc: Exception) -> str:
    msg = str(getattr(exc, "msg", exc))
    return msg.split("Status:")[1].split(";")[0].strip() if "Status:" in msg else type(exc).__name__


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    contract = LabelContract()
    work = Path(tempfile.mkdtemp(prefix="radcascade-soak-"))
    studies = generate_datastore(work / "studies", 4, 4, seed=77)
    model_dir = work / "model"
    model_dir.mkdir()
    for f in ("organ.pt", "lesion.pt", "classifier.pt"):
        (model_dir / f).write_bytes((localserver.APP_DIR / "pretrained" / f).read_bytes())
    server = localserver.start_server(work / "studies", work / "server.log", {"model_dir": str(model_dir)})
    stop_at = time.time() + a.minutes * 60
    lock = threading.Lock()
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    acknowledged: dict[str, bytes] = {}
    trainings: list[str] = []

    def record(kind: str, t0: float, err: Exception | None = None) -> None:
        with lock:
            if err is None:
                latencies[kind].append(time.perf_counter() - t0)
            else:
                errors[f"{kind} {status_of(err)}"] += 1

    def client_loop(k: int) -> None:
        rng = random.Random(k)
        c = MONAILabelClient(server.url, tmpdir=str(work / f"client{k}"))
        while time.time() < stop_at:
            action = rng.random()
            kind = "infer" if action < 0.6 else "save_label" if action < 0.85 else "next_sample"
            study = rng.choice(studies)
            t0 = time.perf_counter()
            try:
                if kind == "infer":
                    c.infer("cascade", study.name, {"fresh": True})
                    record("infer", t0)
                elif kind == "save_label":
                    submitted = np.zeros_like(study.label)
                    for name, idx in SLICER_ORDER.items():
                        submitted[study.label == contract.value_of(name)] = idx
                    img = sitk.GetImageFromArray(np.ascontiguousarray(submitted.transpose(2, 1, 0)))
                    img.CopyInformation(sitk.ReadImage(str(work / "studies" / f"{study.name}.nii.gz")))
                    path = work / f"client{k}" / "submit.nii.gz"
                    path.parent.mkdir(exist_ok=True)
                    sitk.WriteImage(img, str(path))
                    info = [{"name": n, "idx": i} for n, i in SLICER_ORDER.items()]
                    c.save_label(study.name, str(path), tag="final", params={"label_info": info})
                    record("save_label", t0)
                    with lock:
                        acknowledged[study.name] = study.label.transpose(2, 1, 0).tobytes()
                else:
                    c.next_sample("random", {})
                    record("next_sample", t0)
            except (MONAILabelClientException, OSError) as e:
                record(kind, t0, e)

    def trainer_loop() -> None:
        c = MONAILabelClient(server.url, tmpdir=str(work / "trainer"))
        stages = ["organ", "lesion", "classifier"]
        i = 0
        while time.time() < stop_at:
            stage = stages[i % 3]
            params = {"max_epochs": 1} if stage != "classifier" else {"mode": "features"}
            t0 = time.perf_counter()
            try:
                c.train_start(stage, params)
                time.sleep(1)
                while c.train_status(check_if_running=True):
                    time.sleep(1)
                status = c.train_status()["status"]
                record("train", t0)
                trainings.append(f"{stage}:{status}")
            except (MONAILabelClientException, OSError) as e:
                record("train", t0, e)
            i += 1

    def info_loop() -> None:
        """What Slicer's status polling sees: /info latency while everything else runs."""
        c = MONAILabelClient(server.url, tmpdir=str(work / "info"))
        while time.time() < stop_at:
            t0 = time.perf_counter()
            try:
                c.info()
                record("info", t0)
            except (MONAILabelClientException, OSError) as e:
                record("info", t0, e)
            time.sleep(0.5)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(a.clients)]
    threads += [threading.Thread(target=trainer_loop), threading.Thread(target=info_loop)]
    load_before = os.getloadavg()[0]
    t_start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server.stop()
    elapsed = time.time() - t_start

    # Every label whole, valid and equal to the last acknowledged one; every model loadable.
    lost = 0
    final = work / "studies" / "labels" / "final"
    for s in studies:
        path = final / f"{s.name}.nii.gz"
        if s.name in acknowledged or path.exists():
            label = read_label(path, read_geometry(work / "studies" / f"{s.name}.nii.gz"))
            arr = sitk.GetArrayFromImage(label)
            contract.check_values(arr)
            if s.name in acknowledged and arr.tobytes() != acknowledged[s.name]:
                lost += 1
    for f in ("organ.pt", "lesion.pt"):
        read_checkpoint(model_dir / f)
    load_classifier((model_dir / "classifier.pt").read_bytes(), model_dir / "classifier.pt", torch.device("cpu"))

    lines = ["| request | served | p50 s | p95 s |", "|---|---|---|---|"]
    for kind, vals in sorted(latencies.items()):
        lines.append(f"| {kind} | {len(vals)} | {np.percentile(vals, 50):.3f} | {np.percentile(vals, 95):.3f} |")
    table = "\n".join(lines)
    summary = (f"{a.clients} clients + 1 trainer for {elapsed / 60:.1f} min; errors by kind: {dict(errors) or 'none'}; "
               f"trainings: {', '.join(trainings) or 'none'}; labels lost or corrupted: {lost}; model files loadable: yes; "
               f"1-min load average before the run: {load_before:.1f} (other work on the machine if > 0.5)")
    print(table)
    print(summary)
    a.out.mkdir(parents=True, exist_ok=True)
    cmd = f".venv/bin/python benchmarks/soak.py --clients {a.clients} --minutes {a.minutes}"
    meta = {"command": cmd, "date": time.strftime("%Y-%m-%d"), "machine": localserver.machine_description(),
            "served": {k: len(v) for k, v in latencies.items()}, "errors": dict(errors), "trainings": trainings,
            "labels_lost": lost, "latency_s": {k: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                                               for k, v in latencies.items()}}
    (a.out / "soak.json").write_text(json.dumps(meta, indent=1))
    (a.out / "soak.md").write_text(f"# Soak run\n\n- command: `{cmd}`\n- machine: {meta['machine']}\n- date: {meta['date']}\n"
                                   f"- {summary}\n\n{table}\n")
    if lost:
        raise SystemExit(f"{lost} labels lost")


if __name__ == "__main__":
    main()
