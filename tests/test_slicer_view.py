"""``train_stats`` as Slicer's module reads it: readable whatever a trainer wrote (no server needed)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radcascade.serving.slicer_view import TrainerState, options_with_choices, slicer_stats, slicer_train_stats
from slicer_replay import accuracy_bar

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
raw_stats = st.dictionaries(
    st.sampled_from(["best_metric", "epoch", "epochs_done", "total_epochs", "total_time", "total_time_s", "status",
                     "message", "val_auc"]),
    json_values, max_size=9)


def _module_reads(view: dict) -> None:
    """What updateGUIFromParameterNode and monitorTraining do with the first entry."""
    accuracy_bar(view.get("best_metric", 0))
    current = 0 if view.get("total_time") else view.get("epoch", 1)
    percent = max(1, 100 * current / view.get("total_epochs", 1))
    assert 1 <= percent <= 100


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # shared 2-core CI
@given(raw_stats, st.booleans())
def test_any_raw_stats_give_a_view_the_module_can_read(raw, running):
    view = slicer_stats(TrainerState("organ", raw, 0.0, "validation Dice"), running)
    _module_reads(view)
    assert ("total_time" in view) is (not running)


def test_null_metric_reads_as_zero_with_the_reason():
    view = slicer_stats(TrainerState("organ", {"status": "DONE", "best_metric": None, "epoch": 3, "total_epochs": 3,
                                               "total_time_s": 12.0}, 5.0, "validation Dice"), running=False)
    assert view["best_metric"] == 0.0 and "no validation" in view["best_metric_note"]
    assert view["total_time"] == "12.0s" and view["epoch"] == 3


def test_running_trainer_first_then_most_recent():
    states = [TrainerState("organ", {"best_metric": 0.9}, 30.0, "Dice"),
              TrainerState("lesion", {"best_metric": 0.5}, 10.0, "Dice"),
              TrainerState("classifier", {"best_metric": 0.7}, 20.0, "AUC")]
    assert list(slicer_train_stats(states, running="lesion")) == ["lesion", "organ", "classifier"]
    assert list(slicer_train_stats(states, running=None)) == ["organ", "classifier", "lesion"]
    running = slicer_train_stats(states, running="lesion")["lesion"]
    assert running["status"] == "RUNNING" and "total_time" not in running


def test_stale_running_status_is_reported_as_interrupted():
    view = slicer_stats(TrainerState("organ", {"status": "RUNNING", "epoch": 2, "total_epochs": 5}, 1.0, "Dice"), False)
    assert view["status"] == "INTERRUPTED"


def test_choices_become_dropdowns_with_the_default_first():
    config = options_with_choices({"mode": "auto", "max_epochs": 15}, {"mode": ["scratch", "features", "auto"]})
    assert config == {"mode": ["auto", "scratch", "features"], "max_epochs": 15}
