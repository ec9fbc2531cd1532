"""NIH ChestX-ray14 indexer: the release's CSV and image folders -> a MONAI datalist with patient-level splits.

Release layout (Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
Weakly-Supervised Classification and Localization of Common Thorax Diseases", CVPR 2017)::

    root/
      Data_Entry_2017.csv  (or Data_Entry_2017_v2020.csv)
      BBox_List_2017.csv   (optional: boxes for about 1,000 images)
      train_val_list.txt, test_list.txt   (optional: the official patient-disjoint split)
      images/00000001_000.png ...   or   images_001/images/... images_012/images/...
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medplugin.data.datalist import CsvReader, open_text
from medplugin.data.indexer import DatasetIndexer, ProblemReport, Scan
from medplugin.errors import BadInputError
from medplugin.utils import write_json

__all__ = [
    "FINDINGS",
    "CSV_NAMES",
    "ChestXray14Indexer",
    "index_chestxray14",
    "chestxray14_datalist",
    "positive_weights",
    "read_bbox_list",
    "write_datalist",
]

logger = logging.getLogger(__name__)

FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
"""The 14 findings, in the fixed order of every ``label`` vector this module writes."""

NO_FINDING = "No Finding"
CSV_NAMES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
"""CSV file names looked for, in order of preference (the 2020 revision first)."""

_SHOW = 5  # names shown in a message about many missing/bad items
_SKIPPED = "{where}: {n} bad row(s) skipped in all (on_bad_input='skip')"


_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def _norm(text: str) -> str:
    """Normalise a header cell or label: lower case, only letters and digits."""
    return _NOT_ALNUM.sub("", str(text).lower())


# finding name as written anywhere (ChestX-ray14 CSV, BBox list's "Infiltrate", spaces) -> canonical name
_FINDING_ALIASES: dict[str, str] = {_norm(f): f for f in FINDINGS}
_FINDING_ALIASES[_norm("Infiltrate")] = "Infiltration"
_INDEX = {f: i for i, f in enumerate(FINDINGS)}

_REQUIRED = {"image": "Image Index", "labels": "Finding Labels", "patient": "Patient ID", "view": "View Position"}


def _find_columns(header: Sequence[str], wanted: dict[str, str], csv_path: Path) -> dict[str, int]:
    """Column index of each wanted column, matching names by :func:`_norm` (tolerates spacing, case, '#')."""
    normed = [_norm(h) for h in header]
    found: dict[str, int] = {}
    missing = []
    for key, name in wanted.items():
        try:
            found[key] = normed.index(_norm(name))
        except ValueError:
            missing.append(name)
    if missing:
        raise BadInputError(
            csv_path,
            f"line 1: missing required column(s) {missing}; the header has {[h for h in header if h.strip()]}",
        )
    return found


def _open_csv(path: Path, wanted: dict[str, str]) -> tuple[CsvReader, list[str], dict[str, int]]:
    """A reader of the CSV past its header, the header, and the column index of each ``wanted`` column."""
    reader = CsvReader(open_text(path), path)
    try:
        header = next(reader)
    except StopIteration:
        raise BadInputError(path, "empty CSV (no header)") from None
    return reader, header, _find_columns(header, wanted, path)


def _scan_images(root: Path) -> dict[str, str]:
    """Map PNG file name -> absolute path for ``root/images`` and ``root/images_*/images`` (or ``images_*``)."""
    folders: list[Path] = []
    root = Path(os.path.abspath(root))
    with os.scandir(root) as it:
        subdirs = sorted((e.name, e.path) for e in it if e.is_dir())
    for name, path in subdirs:
        if name == "images" or re.fullmatch(r"images_\d+", name):
            inner = Path(path) / "images"
            folders.append(inner if inner.is_dir() else Path(path))
    names: dict[str, str] = {}
    duplicates = []
    for folder in folders:
        with os.scandir(folder) as it:
            for e in it:
                if not e.name.lower().endswith(".png") or not e.is_file():
                    continue
                if e.name in names:
                    duplicates.append(e.name)
                    continue
                names[e.name] = e.path  # absolute: the folders are
    if duplicates:
        logger.warning(
            "%s: %d image name(s) found in more than one image folder, keeping the first: %s",
            root,
            len(duplicates),
            ", ".join(duplicates[:_SHOW]),
        )
    return names


def _read_name_list(path: Path) -> list[str]:
    """Names of a one-name-per-line text file (blank lines and ``#`` comments ignored)."""
    if not path.is_file():
        raise BadInputError(path, "file not found")
    out = []
    with open_text(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(os.path.basename(line))
    return out


def _parse_labels(text: str) -> list[float] | str:
    """The 14-float label vector of a ``Finding Labels`` cell, or the offending value as a string."""
    parts = [p.strip() for p in str(text).split("|")]
    if not parts or any(not p for p in parts):
        return repr(text)
    if len(parts) == 1 and _norm(parts[0]) == _norm(NO_FINDING):
        return [0.0] * len(FINDINGS)
    label = [0.0] * len(FINDINGS)
    for p in parts:
        name = _FINDING_ALIASES.get(_norm(p))
        if name is None:
            return repr(p)
        label[_INDEX[name]] = 1.0
    return label


def _check_choice(name: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


def _rows_report(path: Path, on_bad_input: str) -> ProblemReport:
    """The bad-row policy of this module's CSVs: the first bad row stops a ``"fail"`` run (it usually means a
    wrong file); ``"skip"`` drops bad rows and lists them in one warning."""
    _check_choice("on_bad_input", on_bad_input, ("fail", "skip"))
    return ProblemReport(on_bad_input, path, fail_fast=True, logger=logger, skip_summary=_SKIPPED)


def _any_finding(entry: dict) -> int:
    return int(any(entry["label"]))


class ChestXray14Indexer(DatasetIndexer):
    """NIH ChestX-ray14 -> training/validation/test with patient-level splits (see :func:`index_chestxray14`)."""

    name = "ChestX-ray14"
    stratify = staticmethod(_any_finding)
    fail_fast = True
    skip_summary = _SKIPPED
    test_overlap = "error"
    may_have_test_part = True

    def __init__(self, root: str | os.PathLike | None, val_fraction: float = 0.1, seed: int = 0,
                 views: Sequence[str] | None = ("PA", "AP"), exclude_file: str | os.PathLike | None = None,
                 on_bad_input: str = "fail", csv_name: str | None = None, test_fraction: float = 0.2) -> None:
        _check_choice("on_bad_input", on_bad_input, ("fail", "skip"))
        super().__init__(root, val_fraction, test_fraction, seed, on_bad_input)
        if views is not None and (not isinstance(views, (list, tuple, set, frozenset)) or not views
                                  or not all(isinstance(v, str) and v.strip() for v in views)):
            raise ValueError(
                f"views must be None or a non-empty sequence of view names like ('PA', 'AP'), got {views!r}."
            )
        self.views = None if views is None else {v.strip().upper() for v in views}
        self.exclude_file, self.csv_name = exclude_file, csv_name

    def check_datalist(self, datalist: dict[str, list[dict]], path: Path) -> dict[str, list[dict]]:
        """Every entry of a datalist JSON must have a 14-value 0/1 ``label`` in :data:`FINDINGS` order."""
        for section, entries in datalist.items():
            for i, e in enumerate(entries):
                lab = e["label"]
                if not isinstance(lab, list) or len(lab) != len(FINDINGS) or any(v not in (0, 1) for v in lab):
                    raise BadInputError(path, f"{section}[{i}] label must be {len(FINDINGS)} values of 0/1 in "
                                              f"the order {list(FINDINGS)}, got {lab!r}")
        return datalist

    def scan(self) -> Scan:
        """Read the CSV, find the images once, and take the official split's lists when both exist."""
        root = self.root
        if not root.is_dir():
            raise BadInputError(root, "ChestX-ray14 folder not found")
        if self.csv_name is not None:
            csv_path = root / self.csv_name
            if not csv_path.is_file():
                raise BadInputError(csv_path, "file not found")
        else:
            present = [root / n for n in CSV_NAMES if (root / n).is_file()]
            if not present:
                raise BadInputError(root, f"no ChestX-ray14 CSV found: expected one of {list(CSV_NAMES)}")
            csv_path = present[0]
        logger.info("ChestX-ray14: reading %s", csv_path)
        self.problems.where = csv_path
        train_val_path, test_path = root / "train_val_list.txt", root / "test_list.txt"
        official = train_val_path.is_file() and test_path.is_file()
        if official != (train_val_path.is_file() or test_path.is_file()):
            logger.warning(
                "%s: only one of train_val_list.txt / test_list.txt exists; ignoring it and splitting by patient", root
            )
        excluded = set(_read_name_list(Path(self.exclude_file))) if self.exclude_file is not None else set()

        entries, names, missing = self._read_csv(csv_path, _scan_images(root), excluded)
        if missing:
            reason = (
                f"{len(missing)} image(s) listed in {csv_path.name} not found under images/ or images_NNN/images/: "
                f"{', '.join(missing[:_SHOW])}{' ...' if len(missing) > _SHOW else ''}; a partial download (some "
                "of the 12 images_NNN archives)? --on_bad_input skip indexes only the images that are there"
            )
            self.problems.add(root, reason, count=len(missing))
        self.problems.close()
        if not entries:
            kept = len(entries) + len(missing)
            raise BadInputError(root, f"no usable images: {kept} row(s) kept from {csv_path.name}, none found on disk")
        if not official:
            return Scan(entries)
        train_val_names = set(_read_name_list(train_val_path))
        test_names = set(_read_name_list(test_path))
        both = train_val_names & test_names
        if both:
            raise BadInputError(
                test_path, f"{len(both)} image(s) are also in train_val_list.txt: {', '.join(sorted(both)[:_SHOW])}"
            )
        train_val = [e for e, n in zip(entries, names, strict=True) if n in train_val_names]
        test = [e for e, n in zip(entries, names, strict=True) if n in test_names]
        unlisted = len(entries) - len(train_val) - len(test)
        if unlisted:
            logger.warning("%s: %d image(s) in neither train_val_list.txt nor test_list.txt; dropped", root, unlisted)
        return Scan(train_val, test, test_path)

    def _read_csv(self, csv_path: Path, images: dict[str, str], excluded: set[str]):
        """Entries of the CSV's good rows whose image exists, their image names, and the names of missing images."""
        entries: list[dict] = []
        names: list[str] = []
        missing: list[str] = []
        seen: dict[str, int] = {}
        label_cache: dict[str, list[float] | str] = {}
        bad, keep_views = self.problems.add, self.views
        n_excluded = n_other_view = 0
        reader, _, cols = _open_csv(csv_path, _REQUIRED)
        need = max(cols.values()) + 1
        for row in reader:
            line = reader.line_num
            if not "".join(row).strip():  # blank line (one join is several times faster than any() per cell)
                continue
            if len(row) < need:
                bad(csv_path, f"line {line}: {len(row)} value(s), expected at least {need} ({row!r})")
                continue
            name = row[cols["image"]].strip()
            if "/" in name or "\\" in name:
                name = os.path.basename(name.replace("\\", "/"))
            patient = row[cols["patient"]].strip()
            view = row[cols["view"]].strip().upper()
            if not name:
                bad(csv_path, f"line {line}: empty 'Image Index'")
                continue
            if not patient:
                bad(csv_path, f"line {line}: empty 'Patient ID' for image {name!r}")
                continue
            if not view:
                bad(csv_path, f"line {line}: empty 'View Position' for image {name!r}")
                continue
            text = row[cols["labels"]]
            label = label_cache.get(text)
            if label is None:  # about 800 distinct values in the real CSV: parse each once
                label = label_cache[text] = _parse_labels(text)
            if isinstance(label, str):
                bad(csv_path,
                    f"line {line}: unknown finding label {label} in 'Finding Labels' {row[cols['labels']]!r} "
                    f"(expected '|'-separated names from {list(FINDINGS)} or {NO_FINDING!r})")
                continue
            if name in seen:
                bad(csv_path, f"line {line}: duplicate image {name!r} (first on line {seen[name]})")
                continue
            seen[name] = line
            if name in excluded:
                n_excluded += 1
            elif keep_views is not None and view not in keep_views:
                n_other_view += 1
            elif name not in images:
                missing.append(name)
            else:
                entries.append({"image": images[name], "label": list(label), "patient_id": patient, "view": view})
                names.append(name)
        if n_excluded or excluded:
            logger.info("%s: %d image(s) excluded by %s", csv_path, n_excluded, self.exclude_file)
        if n_other_view:
            logger.info("%s: %d image(s) with a view other than %s left out", csv_path, n_other_view,
                        sorted(keep_views))
        return entries, names, missing


def index_chestxray14(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0,
                      views: Sequence[str] | None = ("PA", "AP"), exclude_file: str | os.PathLike | None = None,
                      on_bad_input: str = "fail", csv_name: str | None = None,
                      test_fraction: float = 0.2) -> dict[str, list[dict]]:
    """Index an NIH ChestX-ray14 release into a MONAI datalist with patient-level splits.

    Reads ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv`` (the 2020 revision when both exist), tolerant
    of the real header's quirks (``OriginalImage[Width,Height]`` split over two columns, a trailing empty
    column, spacing and case of names): only ``Image Index``, ``Finding Labels``, ``Patient ID`` and ``View
    Position`` are used. Images are found once by scanning ``images/`` and ``images_NNN/images/``.

    Splits: when ``train_val_list.txt`` and ``test_list.txt`` exist, the official split is used (rows in
    neither list are dropped, counted in a warning) and the validation part is carved from train_val by
    patient. Otherwise patients are split ``1 - val_fraction - test_fraction`` / ``val_fraction`` /
    ``test_fraction`` (by default 70/10/20). Both splits are stratified on "any finding" and seeded by ``seed``;
    no patient is in two parts.

    Args:
        root: the release folder.
        val_fraction: fraction of images (of train_val, with the official split) for validation, in [0, 1).
        seed: seed of the split (a local generator: no global random state is touched).
        views: ``View Position`` values to keep (e.g. ``("PA",)``), or ``None`` for all.
        exclude_file: optional text file of image names to leave out, one per line.
        on_bad_input: ``"fail"`` raises :class:`BadInputError` at the first bad row or on missing images;
            ``"skip"`` drops them and lists them in one warning.
        csv_name: the CSV file name inside ``root`` (default: the first of :data:`CSV_NAMES` present).
        test_fraction: fraction of images for the test part when there is no official split, in [0, 1).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, entries
        ``{"image": absolute path, "label": 14 floats 0/1 in FINDINGS order, "patient_id": str, "view": str}``.

    Raises:
        ValueError: for invalid arguments.
        BadInputError: for a missing root/CSV/list file, a missing required column, a bad row (unknown finding
            label, empty value, duplicate image; the message names the CSV, the line and the value), missing
            images (count and the first names), or when no image is left.
    """
    return ChestXray14Indexer(root, val_fraction, seed, views, exclude_file, on_bad_input, csv_name,
                              test_fraction).index()


def read_bbox_list(
    path: str | os.PathLike, on_bad_input: str = "fail"
) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """Read ``BBox_List_2017.csv``: image name -> list of ``(finding, x, y, w, h)`` in the image's pixels.

    The real header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` with x, y, w, h in the four columns
    from ``Bbox [x``; a header with separate ``x, y, w, h`` columns is read as well. The release writes
    ``Infiltrate`` where the Data_Entry CSV writes ``Infiltration``: names are mapped onto :data:`FINDINGS`.

    Args:
        path: the CSV file.
        on_bad_input: ``"fail"`` raises on the first bad row; ``"skip"`` drops bad rows and lists them in a warning.

    Returns:
        image name -> boxes, in file order.

    Raises:
        ValueError: for an invalid ``on_bad_input``.
        BadInputError: for a missing file or column, an unknown finding, or a non-numeric or negative box value
            (naming the line and the value).
    """
    path = Path(path)
    problems = _rows_report(path, on_bad_input)
    if not path.is_file():
        raise BadInputError(path, "file not found")
    out: dict[str, list[tuple[str, float, float, float, float]]] = {}
    reader, header, cols = _open_csv(path, {"image": "Image Index", "finding": "Finding Label"})
    normed = [_norm(h) for h in header]
    if all(k in normed for k in ("x", "y", "w", "h")):
        box_cols = [normed.index(k) for k in ("x", "y", "w", "h")]
    else:
        starts = [i for i, h in enumerate(normed) if h.startswith("bbox")]
        if not starts:
            raise BadInputError(path, f"line 1: no 'Bbox [x,y,w,h]' column in the header {header}")
        box_cols = list(range(starts[0], starts[0] + 4))
    need = max(box_cols + list(cols.values())) + 1
    for row in reader:
        line = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) < need:
            problems.add(path, f"line {line}: {len(row)} value(s), expected at least {need} ({row!r})")
            continue
        name = os.path.basename(row[cols["image"]].strip())
        finding = _FINDING_ALIASES.get(_norm(row[cols["finding"]]))
        if not name:
            problems.add(path, f"line {line}: empty 'Image Index'")
            continue
        if finding is None:
            problems.add(path, f"line {line}: unknown finding label {row[cols['finding']]!r} "
                               f"(expected one of {list(FINDINGS)})")
            continue
        try:
            x, y, w, h = (float(row[i]) for i in box_cols)
        except ValueError:
            problems.add(path, f"line {line}: box values {[row[i] for i in box_cols]} are not all numbers")
            continue
        if not all(map(lambda v: v == v and v >= 0, (x, y, w, h))):
            problems.add(path, f"line {line}: box values {(x, y, w, h)} must be non-negative numbers")
            continue
        out.setdefault(name, []).append((finding, x, y, w, h))
    problems.close()
    return out


def write_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write a datalist (e.g. from :func:`index_chestxray14`) as indented JSON, atomically.

    Args:
        datalist: the datalist dict.
        path: the JSON file to write.

    Returns:
        the written path.
    """
    return write_json(path, datalist)


def chestxray14_datalist(dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None = None,
                         val_fraction: float = 0.1, seed: int = 0, views: Sequence[str] | None = ("PA", "AP"),
                         exclude_file: str | os.PathLike | None = None,
                         on_bad_input: str = "fail") -> dict[str, list[dict]]:
    """What a bundle config calls: read ``datalist`` (JSON written by ``medplugin datalist chestxray14``) when
    given, else index ``dataset_dir`` with :func:`index_chestxray14`. Relative image paths in the JSON are taken
    relative to the JSON's folder; every entry must have a 14-value ``label``.

    Raises:
        BadInputError: as :func:`index_chestxray14`, or a datalist whose labels are not 14 values of 0/1.
    """
    return ChestXray14Indexer(dataset_dir, val_fraction, seed, views, exclude_file, on_bad_input).load(datalist)


def positive_weights(entries: Sequence[dict], max_weight: float = 100.0) -> list[float]:
    """Per-finding positive-class weights ``negatives / positives`` of training entries, for
    ``torch.nn.BCEWithLogitsLoss(pos_weight=...)``.

    Findings are rare in ChestX-ray14 (Hernia about 0.2 % of images); weighting the positive term by the
    negative-to-positive ratio balances each finding's loss (as CheXNet's weighted binary cross-entropy,
    Rajpurkar et al. 2017). A finding without positives gets weight 1; weights are capped at ``max_weight``.

    Args:
        entries: datalist entries with a 14-value ``label``.
        max_weight: upper bound of a weight.

    Returns:
        14 floats in :data:`FINDINGS` order.

    Raises:
        ValueError: no entries, or a label that is not 14 values.
    """
    if not entries:
        raise ValueError("positive_weights needs at least one training entry.")
    import numpy as np

    labels = np.asarray([e["label"] for e in entries], dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] != len(FINDINGS):
        raise ValueError(f"labels must be {len(FINDINGS)} values each, got an array of shape {labels.shape}.")
    pos = labels.sum(axis=0)
    neg = labels.shape[0] - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return [float(v) for v in np.clip(w, 1.0 / max_weight, max_weight)]
