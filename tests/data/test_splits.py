import pytest

from medplugin.data.splits import assert_disjoint_patients, patient_level_split


def _items(n_patients=40, per=5):
    return [{"patient_id": f"p{p}", "label": p % 4, "k": k} for p in range(n_patients) for k in range(per)]


def test_no_patient_in_two_parts_and_all_items_kept():
    items = _items()
    parts = patient_level_split(items, {"training": 0.7, "validation": 0.1, "test": 0.2}, seed=3)
    assert sum(len(v) for v in parts.values()) == len(items)
    assert_disjoint_patients(parts)
    sets = [{e["patient_id"] for e in v} for v in parts.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    # every class is represented in validation (stratified)
    assert {e["label"] for e in parts["validation"]} == {0, 1, 2, 3}


def test_same_seed_same_split_other_seed_differs():
    items = _items()
    a = patient_level_split(items, {"training": 0.8, "validation": 0.2}, seed=1)
    b = patient_level_split(items, {"training": 0.8, "validation": 0.2}, seed=1)
    c = patient_level_split(items, {"training": 0.8, "validation": 0.2}, seed=2)
    assert a == b
    assert a["validation"] != c["validation"]


def test_fractions_respected_on_large_data():
    parts = patient_level_split(_items(1000, 3), {"training": 0.9, "validation": 0.1}, seed=0)
    assert abs(len(parts["validation"]) / 3000 - 0.1) < 0.01


def test_tiny_data_still_gets_a_validation_patient_per_class():
    parts = patient_level_split(_items(8, 2), {"training": 0.9, "validation": 0.1}, seed=0)
    assert {e["label"] for e in parts["validation"]} == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "fractions, match",
    [({"a": 0.5, "b": 0.4}, "sum to 1"), ({"a": 1.2, "b": -0.2}, r"in \(0, 1\]"), ({}, "at least one part")],
)
def test_bad_fractions_are_named(fractions, match):
    with pytest.raises(ValueError, match=match):
        patient_level_split(_items(), fractions)


def test_missing_patient_key_is_named():
    with pytest.raises(ValueError, match="has no 'patient_id' key"):
        patient_level_split([{"label": 0}], {"a": 1.0})


def test_assert_disjoint_names_the_patient():
    with pytest.raises(ValueError, match="p1 in"):
        assert_disjoint_patients({"a": [{"patient_id": "p1"}], "b": [{"patient_id": "p1"}]})
