"""Typed train options: what Slicer's Options panel sends is parsed once, bad values get a clear 422."""

import pytest
from fastapi import HTTPException

from radcascade.serving.options import ClassifierTrainOptions, StageTrainOptions, parse_bool


@pytest.mark.parametrize("value,expected", [(True, True), ("on", True), ("1", True), ("False", False), (0, False),
                                            (["yes", "no"], True)])
def test_one_boolean_parser(value, expected):
    assert parse_bool(value) is expected


def test_slicer_text_fields_parse_to_their_types():
    opts = StageTrainOptions().parse({"max_epochs": "5", "learning_rate": "0.0005", "val_split": "0", "seed": "",
                                      "warm_start": False, "model": "organ", "gpus": "all"})
    assert opts == StageTrainOptions(max_epochs=5, learning_rate=0.0005, val_split=0.0, warm_start=False)


@pytest.mark.parametrize("request_", [{"max_epochs": "ten"}, {"max_epochs": "2.5"}, {"max_epochs": 0},
                                      {"val_split": "1"}, {"learning_rate": "nan"}, {"warm_start": "maybe"}])
def test_bad_values_are_refused_with_the_option_named(request_):
    with pytest.raises(HTTPException) as e:
        StageTrainOptions().parse(request_)
    assert e.value.status_code == 422 and next(iter(request_)).split("_")[0] in e.value.detail


def test_classifier_choices_are_dropdowns_and_checked():
    config = ClassifierTrainOptions(mode="features").config()
    assert config["mode"][0] == "features" and "auto" in config["mode"] and isinstance(config["backbone"], list)
    assert ClassifierTrainOptions().parse({"mode": ["finetune", "auto"], "depth": "2"}).depth_blocks == 2
    assert ClassifierTrainOptions().parse({}).depth_blocks is None
    with pytest.raises(HTTPException):
        ClassifierTrainOptions().parse({"mode": "magic"})
