"""The dataset-indexer base: what every public layout's indexer shares.

A layout module (:mod:`~medplugin.data.oct2017`, :mod:`~medplugin.data.fundus`, :mod:`~medplugin.data.chestxray14`,
:mod:`~medplugin.data.knee`, :mod:`~medplugin.data.knee_segmentation`, :mod:`~medplugin.data.lungseg`) subclasses
:class:`DatasetIndexer`, scans its own layout in :meth:`~DatasetIndexer.scan` (which files, which labels, which
patient) and declares its quirks as class attributes. The base owns the rest:

- the bad-input policy (``on_bad_input``: ``"fail"`` stops before training with the list of bad files, ``"skip"``
  leaves them out with one warning) and the problem report that names every bad file and its reason
  (:class:`ProblemReport`);
- the patient-level split (:func:`medplugin.data.splits.patient_level_split`) into ``training``, ``validation``
  and ``test``, with the release's own test part kept when it has one, and the check that no patient is in two
  parts;
- the "datalist JSON or folder" choice the bundle configs make (:meth:`DatasetIndexer.load`).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from medplugin.data.datalist import read_datalist
from medplugin.data.splits import assert_disjoint_patients, patient_level_split
from medplugin.errors import BadInputError

__all__ = ["SECTIONS", "ON_BAD_INPUT", "ProblemReport", "Scan", "DatasetIndexer", "check_fraction"]

SECTIONS = ("training", "validation", "test")
"""The parts of every datalist an indexer returns, in this order."""
ON_BAD_INPUT = ("fail", "skip")
_LISTED = 50  # bad items named one by one in a report; the rest are counted
SKIP_HINT = "fix or remove the bad items, or run with --on_bad_input skip to leave them out (each named in a warning)"
"""What to do about bad items (:attr:`BadInputError.hint` of a ``"fail"`` report), in the bundles' spelling."""


def check_fraction(name: str, value: Any, allow_zero: bool) -> float:
    """``value`` as a float in ``[0, 1)`` (``allow_zero``) or ``(0, 1)``; ``ValueError`` naming it otherwise."""
    interval = "[0, 1)" if allow_zero else "(0, 1)"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.") from None
    if not (0.0 <= v < 1.0 if allow_zero else 0.0 < v < 1.0):
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    return v


def _check_sum(val: float, test: float) -> None:
    if val + test >= 1 or 1 - val - test <= 0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val} + {test}.")


class ProblemReport:
    """The bad-input policy and the report of bad items (files, CSV rows) of one scan.

    Add each bad item with :meth:`add`; :meth:`close` then applies the policy: under ``"fail"`` it raises one
    :class:`BadInputError` on ``where`` that names every bad item and its reason, under ``"skip"`` it logs them in
    one warning (the caller has left them out). A ``fail_fast`` report raises the first bad item at once under
    ``"fail"`` (for releases whose first bad row usually means a wrong file, e.g. a 112,120-row CSV).

    Args:
        on_bad_input: ``"fail"`` or ``"skip"``.
        where: the file or folder a ``"fail"`` error and the warning name (settable later, e.g. once a layout is
            found).
        fail_fast: raise the first bad item at once under ``"fail"``.
        logger: where the ``"skip"`` warning goes.
        skip_summary: first line of the ``"skip"`` warning, with ``{n}`` (bad items) and ``{where}``.

    Raises:
        ValueError: ``on_bad_input`` is neither ``"fail"`` nor ``"skip"``.
    """

    def __init__(self, on_bad_input: str, where: str | os.PathLike | None = None, fail_fast: bool = False,
                 logger: logging.Logger | None = None,
                 skip_summary: str = "skipping {n} bad item(s) of {where} (on_bad_input='skip')") -> None:
        if on_bad_input not in ON_BAD_INPUT:
            raise ValueError(f"on_bad_input must be 'fail' or 'skip', got {on_bad_input!r}.")
        self.on_bad_input = on_bad_input
        self.where = where
        self.fail_fast = fail_fast
        self.logger = logger or logging.getLogger(__name__)
        self.skip_summary = skip_summary
        self.items: list[tuple[str, str, int]] = []

    def add(self, path: str | os.PathLike | None, reason: str, count: int = 1) -> None:
        """Record a bad item (the caller leaves it out); under ``"fail"`` with ``fail_fast``, raise it now.

        Args:
            path: the bad file, or the file and place (``"labels.csv"`` with ``"row 4: ..."`` in ``reason``).
            reason: what is wrong, in words a user can act on.
            count: how many items this line stands for (e.g. a line naming 7 missing images).
        """
        if self.fail_fast and self.on_bad_input == "fail":
            raise BadInputError(path, reason, hint=SKIP_HINT)
        self.items.append((str(path), reason, count))

    def close(self) -> None:
        """Apply the policy to the items added since the last close: raise (``"fail"``) or warn (``"skip"``)."""
        items, self.items = self.items, []
        if not items:
            return
        n = sum(c for _, _, c in items)
        listing = "\n".join(f"  {p}: {r}" for p, r, _ in items[:_LISTED])
        more = f"\n  ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
        if self.on_bad_input == "fail":
            raise BadInputError(self.where, f"{n} bad item(s) (on_bad_input='fail'):\n{listing}{more}", hint=SKIP_HINT)
        self.logger.warning("%s:\n%s%s", self.skip_summary.format(n=n, where=self.where), listing, more)


class Scan(NamedTuple):
    """What a layout scan found.

    Attributes:
        pool: entries split by patient into ``training`` and ``validation`` (and ``test`` when ``test`` is None).
        test: the release's own test part, kept as it is; None when the test part is carved from ``pool``.
        test_source: the file or folder that defines ``test`` (named in errors about it).
    """

    pool: list[dict]
    test: list[dict] | None = None
    test_source: str | os.PathLike | None = None


class DatasetIndexer(ABC):
    """Base of the indexers that turn a public release into a MONAI datalist split by patient.

    Subclasses implement :meth:`scan` and may override :meth:`check_datalist`; they declare their quirks in the
    class attributes below. :meth:`index` scans, applies the bad-input policy, splits by patient and checks that
    no patient is in two parts; :meth:`load` is what bundle configs call (a datalist JSON when given, else the
    folder). Entries are dicts with at least ``image`` and ``patient_id``; every datalist has the parts
    :data:`SECTIONS`, in that order.

    Class attributes:
        name: the data set's name in log lines.
        stratify: entry key (or function of an entry) the split is stratified on, or None.
        fail_fast: under ``"fail"``, stop at the first bad item instead of listing all (see :class:`ProblemReport`).
        skip_summary: first line of the ``"skip"`` warning (``{n}``, ``{where}``).
        zero_validation: whether ``val_fraction`` may be 0 (an empty validation part).
        zero_test: whether ``test_fraction`` may be 0.
        may_have_test_part: whether the release may bring its own test part; then ``test_fraction`` is unused
            there, and ``val_fraction + test_fraction < 1`` is checked only when the test part is carved out
            (otherwise at construction).
        test_overlap: what to do with patients of the release's test part found in the rest: ``"exclude"`` them
            from training and validation (with a warning), raise an ``"error"`` naming the test list, or
            ``"keep"`` them (a warning; no disjointness check).
        datalist_keys: keys every entry of a datalist JSON must have.
        datalist_sections: parts a datalist JSON must have.

    Args:
        root: the release folder (None when only a datalist JSON is read).
        val_fraction: fraction of the pool's images (by patient) for validation.
        test_fraction: fraction for the test part when the release has none of its own; None when it always has.
        seed: seed of the split (a local generator; no global random state is touched).
        on_bad_input: ``"fail"`` or ``"skip"``.

    Raises:
        ValueError: invalid ``on_bad_input`` or fractions.
    """

    name: ClassVar[str] = "dataset"
    stratify: ClassVar[str | Callable[[dict], Hashable] | None] = "label"
    fail_fast: ClassVar[bool] = False
    skip_summary: ClassVar[str] = "skipping {n} bad item(s) of {where} (on_bad_input='skip')"
    zero_validation: ClassVar[bool] = True
    zero_test: ClassVar[bool] = True
    may_have_test_part: ClassVar[bool] = False
    test_overlap: ClassVar[str] = "exclude"
    split_note: ClassVar[str] = ""  # a caveat of the layout's patient split, added to the split's log line
    datalist_keys: ClassVar[tuple[str, ...]] = ("image", "label")
    datalist_sections: ClassVar[tuple[str, ...]] = SECTIONS

    def __init__(self, root: str | os.PathLike | None, val_fraction: float = 0.1, test_fraction: float | None = None,
                 seed: int = 0, on_bad_input: str = "fail") -> None:
        # absolute: the datalist (and every datalist.json a run writes) then works from any folder
        self.root = Path(os.path.abspath(root)) if root is not None else None
        self.logger = logging.getLogger(type(self).__module__)
        self.problems = ProblemReport(on_bad_input, self.root, fail_fast=self.fail_fast, logger=self.logger,
                                      skip_summary=self.skip_summary)
        self.on_bad_input = on_bad_input
        self.val_fraction, self.test_fraction = self.check_fractions(val_fraction, test_fraction)
        self.seed = seed

    def check_fractions(self, val_fraction: float, test_fraction: float | None) -> tuple[float, float | None]:
        """Both fractions as floats in range, and (unless ``may_have_test_part``) their sum below 1.

        Args:
            val_fraction: the validation fraction.
            test_fraction: the test fraction, or None.

        Returns:
            ``(val_fraction, test_fraction)``.
        """
        val = check_fraction("val_fraction", val_fraction, self.zero_validation)
        test = None if test_fraction is None else check_fraction("test_fraction", test_fraction, self.zero_test)
        if test is not None and not self.may_have_test_part:
            _check_sum(val, test)
        return val, test

    @abstractmethod
    def scan(self) -> Scan:
        """Find the layout's items under ``self.root``.

        Checks the layout (raising :class:`BadInputError` naming what is missing), adds every bad item to
        ``self.problems`` and leaves it out, closes the report (so skipped items are logged before any later
        error) and raises when nothing usable is left.

        Returns:
            the entries found, and the release's own test part when it has one.
        """

    def check_datalist(self, datalist: dict[str, list[dict]], path: Path) -> dict[str, list[dict]]:
        """Check or complete a datalist read from a JSON file (default: as it is).

        Args:
            datalist: the parts read by :func:`medplugin.data.datalist.read_datalist`.
            path: the JSON file, for messages.

        Returns:
            the datalist the bundle uses.
        """
        return datalist

    def index(self) -> dict[str, list[dict]]:
        """Scan the release and split it by patient.

        Returns:
            ``{"training": [...], "validation": [...], "test": [...]}``; no patient is in two parts (except
            with ``test_overlap = "keep"``), and every part keeps the scan's order.

        Raises:
            BadInputError: as :meth:`scan`; under ``"fail"``, bad items (each named with its reason).
            ValueError: ``val_fraction + test_fraction >= 1`` where the test part is carved out.
        """
        if self.root is None:
            raise BadInputError(None, "no dataset folder given: set dataset_dir, or datalist to a datalist JSON")
        try:
            found = self.scan()
        except BadInputError as e:
            if e.hint is None and not self.root.is_dir() and Path(e.path) == self.root:
                e.hint = (f"set --dataset_dir to the {self.name} folder (or --datalist to a datalist JSON written by "
                          "`medplugin datalist`)")
            raise
        self.problems.close()
        datalist = self.split(found)
        if self.test_overlap != "keep":
            assert_disjoint_patients(datalist)
        self.logger.info("%s: %s%s", self.name, "; ".join(f"{k} {self._describe(v)}" for k, v in datalist.items()),
                         f"; {self.split_note}" if self.split_note else "")
        return datalist

    def load(self, datalist: str | os.PathLike | None = None) -> dict[str, list[dict]]:
        """What a bundle config calls: read ``datalist`` (a JSON file) when given, else index the folder.

        Relative image paths in the JSON are taken relative to its folder.

        Args:
            datalist: a datalist JSON (e.g. written by ``medplugin datalist``), or None.
        """
        if datalist:
            data = read_datalist(datalist, required_keys=self.datalist_keys, sections=self.datalist_sections)
            return self.check_datalist(data, Path(datalist))
        return self.index()

    def split(self, found: Scan) -> dict[str, list[dict]]:
        """Training / validation / test parts of ``found``, split by patient.

        With the release's own test part, the pool (without the test part's patients, as ``test_overlap``
        says) is split into training and validation; otherwise into training, validation and test.

        Args:
            found: what :meth:`scan` returned.
        """
        val = self.val_fraction
        if found.test is None:
            test = self.test_fraction or 0.0
            _check_sum(val, test)
            return self.patient_split(found.pool, {"training": 1 - val - test, "validation": val, "test": test})
        parts = self.patient_split(self._without_test_patients(found), {"training": 1 - val, "validation": val})
        return {**parts, "test": found.test}

    def patient_split(self, entries: list[dict], fractions: dict[str, float]) -> dict[str, list[dict]]:
        """:func:`~medplugin.data.splits.patient_level_split` of ``entries``; a part whose fraction is 0 is empty.

        Args:
            entries: the entries to split.
            fractions: part name -> fraction (summing to 1 over the positive ones).
        """
        used = {k: v for k, v in fractions.items() if v > 0}
        parts = patient_level_split(entries, used, seed=self.seed, stratify_key=self.stratify)
        return {k: parts.get(k, []) for k in fractions}

    def _without_test_patients(self, found: Scan) -> list[dict]:
        test_patients = {e["patient_id"] for e in found.test}
        overlap = {e["patient_id"] for e in found.pool} & test_patients
        if not overlap:
            return found.pool
        if self.test_overlap == "error":
            try:
                assert_disjoint_patients({"train_val": found.pool, "test": found.test})
            except ValueError as e:
                raise BadInputError(found.test_source, f"the official split is not patient-disjoint: {e}") from e
        if self.test_overlap == "keep":
            self.logger.warning("%d patient(s) appear both in the test part (%s) and in the rest", len(overlap),
                                found.test_source)
            return found.pool
        self.logger.warning("%d patient(s) of the test part (%s) also appear in the rest: left out of training and "
                            "validation", len(overlap), found.test_source)
        return [e for e in found.pool if e["patient_id"] not in test_patients]

    @staticmethod
    def _describe(entries: list[dict]) -> str:
        labels = [e.get("label") for e in entries]
        if not labels or not all(isinstance(v, int) for v in labels):
            return str(len(entries))
        counts = Counter(labels)
        return f"{len(entries)} (labels {', '.join(f'{k}={counts[k]}' for k in sorted(counts))})"
