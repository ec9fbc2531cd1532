"""The indexers give exactly the datalists (and errors) they gave before they shared one base.

``fixtures/indexer_reference.json`` was written by ``python -m tests.data.reference_cases --write`` on main at
cabfff5, before the refactor; see :mod:`tests.data.reference_cases` for the cases. The comparison is strict: the
same entries in the same order with the same keys in the same order, the same splits, the same error types and
messages (but for the few deliberate changes listed in ``CHANGES``).
"""

from __future__ import annotations

import json

import pytest

from tests.data.reference_cases import CASES, FIXTURE, Demos, run_case

REFERENCE = json.loads(FIXTURE.read_text())

# Deliberate changes since the reference, each listed: case -> {place in its result: (before, now)}. The test
# checks that the reference still holds "before" there, so the fixture itself is never edited.
CHANGES = {
    # the knee indexer shares the other indexers' wording of this argument error (it added " = 1.0")
    "knee/clinical_errors": {("returned", 9, "error"): (
        "ValueError: val_fraction + test_fraction must be < 1, got 0.5 + 0.5 = 1.0.",
        "ValueError: val_fraction + test_fraction must be < 1, got 0.5 + 0.5.",
    )},
    # issue 17: a partial download is the usual cause; the error names the option that indexes what is there
    "chest/missing_images": {("returned", 0, "error"): (
        "BadInputError: <work>/cases/chest_missing_images/copy1: 7 image(s) listed in Data_Entry_2017.csv not found "
        "under images/ or images_NNN/images/: 00000003_000.png, 00000007_000.png, 00000008_000.png, 00000009_000.png, "
        "00000011_000.png ...",
        "BadInputError: <work>/cases/chest_missing_images/copy1: 7 image(s) listed in Data_Entry_2017.csv not found "
        "under images/ or images_NNN/images/: 00000003_000.png, 00000007_000.png, 00000008_000.png, 00000009_000.png, "
        "00000011_000.png ...; a partial download (some of the 12 images_NNN archives)? --on_bad_input skip indexes "
        "only the images that are there",
    )},
}


def _expected(name: str):
    expected = json.loads(json.dumps(REFERENCE[name]))
    for place, (before, now) in CHANGES.get(name, {}).items():
        *parents, last = place
        container = expected
        for key in parents:
            container = container[key]
        assert container[last] == before, f"the reference of {name} at {place} is not what CHANGES says"
        container[last] = now
    return expected


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Demos:
    return Demos(tmp_path_factory.mktemp("reference"))


def test_every_case_has_a_reference():
    assert list(CASES) == list(REFERENCE)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_indexer_output_equals_the_reference(name, demos):
    got = json.loads(run_case(name, demos))
    expected = _expected(name)
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)  # dict equality ignores key order; the JSON text does not
