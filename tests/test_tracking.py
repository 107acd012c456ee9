"""Every training run is recorded in MLflow and can be read back."""

from __future__ import annotations

from radcascade.labels import LabelContract
from radcascade.networks import TINY_UNET
from radcascade.tracking import file_digest
from radcascade.training import TrainConfig, Trainer, cases_from_folder


def test_a_training_run_is_read_back_from_mlflow(tiny_studies, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    cfg = TrainConfig(stage="lesion", max_epochs=2, spec=TINY_UNET, patch_size=(32, 32, 16), samples_per_volume=1,
                      val_fraction=0.34, spacing=(4.0, 4.0, 6.0))
    result = Trainer(cfg, LabelContract(), tmp_path / "lesion.pt", tracking_uri=uri).fit(cases_from_folder(tiny_studies.folder))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("radcascade-lesion")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    history = {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
               for k in ("train_loss", "val_dice")}
    assert [round(v, 5) for v in history["train_loss"]] == result.train_loss
    assert [round(v, 5) for v in history["val_dice"]] == result.val_dice
    assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == 2
    assert run.data.metrics["best_metric"] == result.best_metric
    assert run.data.tags["model_digest"] == file_digest(tmp_path / "lesion.pt")
    assert run.data.params["max_epochs"] == "2" and run.data.params["world_size"] == "1"


def test_a_failed_run_is_recorded_as_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        Trainer(TrainConfig(stage="organ", max_epochs=1), LabelContract(), tmp_path / "organ.pt", tracking_uri=uri).fit([])
    except ValueError:
        pass
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("radcascade-organ").experiment_id])
    assert run.info.status == "FAILED" and not (tmp_path / "organ.pt").exists()
