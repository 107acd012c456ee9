import numpy as np
import pytest

from radcascade.labels import LabelContract, LabelContractError


def test_default_contract_values_are_contiguous():
    c = LabelContract()
    assert c.names_to_values() == {"liver": 1, "lesion benign": 2, "lesion malignant": 3}
    assert c.lesion_values == (2, 3) and c.max_value == 3
    assert set(c.colours()) == set(c.names_to_values())


def test_configured_names():
    c = LabelContract.from_config("kidney", "cyst, solid, fat-poor")
    assert c.names_to_values() == {"kidney": 1, "cyst": 2, "solid": 3, "fat-poor": 4}
    assert c.value_of("SOLID") == 3 and c.name_of(4) == "fat-poor"


@pytest.mark.parametrize("organ,classes", [("liver", "liver"), ("background", "a"), ("liver", " , ")])
def test_bad_configuration_is_refused(organ, classes):
    with pytest.raises(LabelContractError):
        LabelContract.from_config(organ, classes) if classes.strip(" ,") else LabelContract(organ, ())


def test_remap_by_name_follows_slicer_segment_order():
    c = LabelContract()
    truth = np.array([0, 1, 1, 2, 3, 3, 0])
    order = {"lesion malignant": 1, "liver": 2, "lesion benign": 3}  # Slicer's segment order
    submitted = np.zeros_like(truth)
    for name, idx in order.items():
        submitted[truth == c.value_of(name)] = idx
    info = [{"name": n, "idx": i} for n, i in order.items()]
    np.testing.assert_array_equal(c.remap_by_name(submitted, info), truth)


def test_remap_without_label_info_requires_contract_values():
    c = LabelContract()
    np.testing.assert_array_equal(c.remap_by_name(np.array([0, 1, 3]), None), [0, 1, 3])
    with pytest.raises(LabelContractError, match="outside the contract"):
        c.remap_by_name(np.array([0, 7]), None)


def test_remap_refuses_unknown_names_and_unnamed_values():
    c = LabelContract()
    with pytest.raises(LabelContractError, match="tumour"):
        c.remap_by_name(np.array([0, 1]), [{"name": "tumour", "idx": 1}])
    with pytest.raises(LabelContractError, match="not named"):
        c.remap_by_name(np.array([0, 1, 2]), [{"name": "liver", "idx": 1}])


def test_background_name_maps_to_zero():
    c = LabelContract()
    out = c.remap_by_name(np.array([0, 5, 6]), [{"name": "Background", "idx": 5}, {"name": "liver", "idx": 6}])
    np.testing.assert_array_equal(out, [0, 0, 1])


@pytest.mark.parametrize("label_info,problem", [
    ("liver", "must be a list"),
    ([{"name": "liver", "idx": "one"}], "not an integer"),
    ([{"name": "liver", "idx": 10**12}], "outside"),
    ([{"name": "liver", "idx": 2**63}], "outside"),
    ([{"name": "liver", "idx": True}], "not an integer"),
    ([["liver", 1]], "is not a {name, idx} object"),
    ([{"name": 5, "idx": 1}], "must be a string"),
])
def test_malformed_label_info_is_refused_with_its_problem(label_info, problem):
    with pytest.raises(LabelContractError, match=problem):
        LabelContract().remap_by_name(np.array([0, 1]), label_info)


def test_unknown_name_without_voxels_is_ignored_with_voxels_refused():
    c = LabelContract()
    info = [{"name": "liver", "idx": 1}, {"name": "Segment_4", "idx": 4}]
    out = c.remap_submitted(np.array([0, 1, 1]), info)
    np.testing.assert_array_equal(out.label, [0, 1, 1])
    assert out.ignored == ("Segment_4",)
    with pytest.raises(LabelContractError, match="Segment_4"):
        c.remap_submitted(np.array([0, 1, 4]), info)


def test_remap_needs_no_table_as_large_as_the_largest_value():
    info = [{"name": "liver", "idx": 2**31 - 1}]
    out = LabelContract().remap_by_name(np.array([0, 2**31 - 1], dtype=np.int64), info)
    np.testing.assert_array_equal(out, [0, 1])
