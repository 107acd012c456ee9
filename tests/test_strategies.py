"""Uncertainty strategies on a real validating datastore: ranking, top-k, leases, unlabelled only."""

import time

import pytest

from radcascade.labels import LabelContract
from radcascade.serving.datastore import ValidatingDatastore
from radcascade.serving.strategies import MostUncertain


@pytest.fixture
def datastore(tiny_studies):
    ds = ValidatingDatastore(str(tiny_studies.folder), LabelContract())
    scores = {"study_003": 0.2, "study_004": 0.9}  # the two unlabelled studies (3 labelled, 2 not)
    for image_id, v in scores.items():
        ds.update_image_info(image_id, {"uncertainty": {"epistemic": v, "tta": v, "classifier": v}})
    ds.update_image_info("study_000", {"uncertainty": {"epistemic": 1.0, "tta": 1.0, "classifier": 1.0}})  # labelled
    return ds


def test_most_uncertain_unlabelled_first(datastore):
    pick = MostUncertain("epistemic")({"strategy": "epistemic", "client_id": "A"}, datastore)
    assert pick["id"] == "study_004"  # study_000 scores higher but is labelled


def test_lesion_weight_ranks_by_the_lesion_stage(datastore):
    # study_004: uncertain organ outline, confident lesions; study_003 the other way round
    for image_id, (organ, lesion) in {"study_003": (0.1, 0.6), "study_004": (0.9, 0.1)}.items():
        datastore.update_image_info(image_id, {"uncertainty": {
            "epistemic": (organ + lesion) / 2, "epistemic_organ": organ, "epistemic_lesion": lesion,
            "tta": 0.0, "classifier": 0.0}})
    request = {"strategy": "epistemic", "client_id": "A"}
    assert MostUncertain("epistemic")(request, datastore)["id"] == "study_004"
    assert MostUncertain("epistemic", lesion_weight=1.0)(request, datastore)["id"] == "study_003"
    with pytest.raises(ValueError, match="al_lesion_weight"):
        MostUncertain("epistemic", lesion_weight=1.5)


def test_lease_keeps_a_study_from_a_second_client(datastore):
    strategy = MostUncertain("combined", lease_s=600)
    datastore.update_image_info("study_004", {"strategy": {"combined": {"ts": int(time.time()), "client_id": "A"}}})
    assert strategy({"strategy": "combined", "client_id": "B"}, datastore)["id"] == "study_003"
    assert strategy({"strategy": "combined", "client_id": "A"}, datastore)["id"] == "study_004"
    datastore.update_image_info("study_003", {"strategy": {"combined": {"ts": int(time.time()), "client_id": "A"}}})
    assert strategy({"strategy": "combined", "client_id": "B"}, datastore) is None


def test_top_k_spreads_picks_over_the_k_most_uncertain(datastore):
    strategy = MostUncertain("tta", seed=0)
    picks = {strategy({"strategy": "tta", "top_k": 2}, datastore)["id"] for _ in range(30)}
    assert picks == {"study_003", "study_004"}
    assert {strategy({"strategy": "tta", "top_k": 1}, datastore)["id"] for _ in range(10)} == {"study_004"}


def test_diversity_steers_away_from_a_duplicate_of_a_recently_served_study(datastore):
    from radcascade.active_learning import Diversity

    hist = [0.0, 0.1, 0.6, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]
    def record(v, h):
        return {"uncertainty": {"epistemic": v, "tta": v, "classifier": v, "histogram": h}}

    datastore.update_image_info("study_000", {**record(0.9, hist),  # served a minute ago, labelled since
                                              "strategy": {"combined": {"ts": int(time.time()) - 60, "client_id": "A"}}})
    datastore.update_image_info("study_004", record(0.9, [h + 0.001 for h in hist]))  # its near-duplicate
    datastore.update_image_info("study_003", record(0.2, [0.0, 0.0, 0.0, 0.1, 0.3, 0.5, 0.1, 0.0, 0.0]))
    request = {"strategy": "combined", "client_id": "B"}
    assert MostUncertain("combined")(request, datastore)["id"] == "study_004"
    assert MostUncertain("combined", diversity=Diversity(penalty=1.0, radius=0.1))(request, datastore)["id"] == "study_003"
