"""The indexers give exactly the datalists (and errors) they gave before they shared one base.

``fixtures/indexer_reference.json`` was written by ``python -m tests.data.reference_cases --write`` on main at
cabfff5, before the refactor; see :mod:`tests.data.reference_cases` for the cases. The comparison is strict: the
same entries in the same order with the same keys in the same order, the same splits, the same error types and
messages.
"""

from __future__ import annotations

import json

import pytest

from tests.data.reference_cases import CASES, FIXTURE, Demos, run_case

REFERENCE = json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Demos:
    return Demos(tmp_path_factory.mktemp("reference"))


def test_every_case_has_a_reference():
    assert list(CASES) == list(REFERENCE)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_indexer_output_equals_the_reference(name, demos):
    got = json.loads(run_case(name, demos))
    expected = REFERENCE[name]
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)  # dict equality ignores key order; the JSON text does not
