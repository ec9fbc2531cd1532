"""Diabetic-retinopathy fundus photograph releases -> MONAI datalist, with patient-level splits.

Layouts (grades on the international clinical DR scale: 0 none, 1 mild, 2 moderate, 3 severe
non-proliferative, 4 proliferative DR):

- Kaggle EyePACS (Diabetic Retinopathy Detection, 2015): ``trainLabels.csv`` with columns ``image,level``
  and images ``train/<patient>_left.jpeg`` / ``train/<patient>_right.jpeg``. A labelled test part is read
  from ``testLabels.csv`` (or Kaggle's later ``retinopathy_solution.csv``) with ``test/`` when present.
  Both eyes of a patient always land in the same split.
- APTOS 2019 Blindness Detection: ``train.csv`` with columns ``id_code,diagnosis`` and images
  ``train_images/<id_code>.png``. APTOS gives no patient ids: each image counts as its own patient.

Every entry is ``{"image", "label", "grade", "patient_id", "eye"}``; ``label`` is the grade (``task="grade"``)
or 1 for referable DR (grade >= 2) and 0 otherwise (``task="referable"``).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path

from medplugin.data.indexer import DatasetIndexer, Scan
from medplugin.errors import BadInputError

__all__ = [
    "GRADE_NAMES",
    "REFERABLE_NAMES",
    "TASKS",
    "FundusIndexer",
    "class_names",
    "detect_layout",
    "index_eyepacs",
    "index_aptos",
    "index_fundus",
    "fundus_datalist",
    "task_label",
]

logger = logging.getLogger(__name__)

GRADE_NAMES = ("none", "mild", "moderate", "severe", "proliferative")
REFERABLE_NAMES = ("non-referable", "referable")
TASKS = ("referable", "grade")
REFERABLE_GRADE = 2
_EYE = re.compile(r"^(?P<pid>[^_/\\]+)_(?P<eye>left|right)$")
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
_EYEPACS_TEST_CSVS = ("testLabels.csv", "retinopathy_solution.csv")
# layout -> (label CSV, image folder, id column, grade column, image suffixes tried in order)
_LAYOUTS = {
    "eyepacs": ("trainLabels.csv", "train", "image", "level", (".jpeg", ".jpg", ".png")),
    "aptos": ("train.csv", "train_images", "id_code", "diagnosis", (".png", ".jpg", ".jpeg")),
}


def class_names(task: str) -> list[str]:
    """Output classes of a task: 2 for ``"referable"``, the 5 grades for ``"grade"``."""
    _check_task(task)
    return list(REFERABLE_NAMES if task == "referable" else GRADE_NAMES)


def task_label(grade: int, task: str) -> int:
    """The training label of a DR ``grade`` for ``task``."""
    _check_task(task)
    return int(grade >= REFERABLE_GRADE) if task == "referable" else int(grade)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")


def detect_layout(root: str | os.PathLike) -> str:
    """``"eyepacs"`` or ``"aptos"`` from the label file found in ``root``; ``BadInputError`` otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(root, "dataset folder not found")
    if (root / "trainLabels.csv").is_file():
        return "eyepacs"
    if (root / "train.csv").is_file():
        return "aptos"
    raise BadInputError(root, "no trainLabels.csv (Kaggle EyePACS: image,level + train/<patient>_<eye>.jpeg) "
                              "or train.csv (APTOS 2019: id_code,diagnosis + train_images/<id_code>.png) found")


def _read_rows(csv_path: Path, id_col: str, label_col: str) -> list[tuple[int, str, str]]:
    """``(row number, id, label text)`` of a label CSV; the header must hold both columns."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if id_col not in fields or label_col not in fields:
                raise BadInputError(csv_path, f"header must name columns {id_col!r} and {label_col!r}, got {fields}")
            reader.fieldnames = fields
            return [(i, (r.get(id_col) or "").strip(), (r.get(label_col) or "").strip())
                    for i, r in enumerate(reader, start=2)]  # row 1 is the header
    except UnicodeDecodeError as e:
        raise BadInputError(csv_path, f"not a text CSV file ({e})") from e
    except csv.Error as e:
        raise BadInputError(csv_path, f"malformed CSV ({e})") from e


def _parse_grade(text: str) -> int | None:
    return int(text) if text in ("0", "1", "2", "3", "4") else None


def _check_image(path: Path) -> str | None:
    """Cheap checks (exists, non-empty, JPEG/PNG header); the reason when bad, else ``None``."""
    if not path.is_file():
        return "image file not found"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(8)
    if not any(head.startswith(m) for m in _MAGIC):
        return "not a JPEG or PNG file (bad header)"
    return None


class FundusIndexer(DatasetIndexer):
    """Kaggle EyePACS or APTOS 2019 -> training/validation/test, split by patient and stratified by grade.

    Validation (and test, when the release has no labelled test part) are carved by patient, stratified by
    each patient's most frequent grade, so both eyes of a patient are always in one split. Files are checked
    cheaply (present, non-empty, JPEG/PNG header); nothing is decoded. APTOS's own ``test.csv`` has no labels,
    so its validation and test parts are carved from ``train.csv``.

    Args:
        root: the release folder.
        layout: ``"eyepacs"``, ``"aptos"``, or None to detect it from the label file (:func:`detect_layout`).
        task: ``"grade"`` (label = grade 0-4) or ``"referable"`` (label = grade >= 2).
        val_fraction: share of the training patients held out for validation, in (0, 1).
        test_fraction: share held out for test when there is no labelled test part, in (0, 1).
        seed: seed of the split.
        on_bad_input: ``"fail"`` raises one error listing every bad row/file; ``"skip"`` logs and leaves them out.
    """

    name = "fundus"
    stratify = "grade"
    zero_validation = False
    zero_test = False
    may_have_test_part = True
    datalist_keys = ("image", "grade")

    def __init__(self, root: str | os.PathLike | None, layout: str | None = None, task: str = "grade",
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 on_bad_input: str = "fail") -> None:
        super().__init__(root, val_fraction, test_fraction, seed, on_bad_input)
        _check_task(task)
        if layout not in (None, *_LAYOUTS):
            raise ValueError(f"layout must be None (detect) or one of {tuple(_LAYOUTS)}, got {layout!r}.")
        self.layout, self.task = layout, task

    def scan(self) -> Scan:
        """Read the label CSV(s) and check the images they name (see the class docstring)."""
        root = self.root
        layout = self.layout or detect_layout(root)
        if self.layout is None:
            logger.info("%s: %s layout", root, "Kaggle EyePACS" if layout == "eyepacs" else "APTOS 2019")
        csv_name, image_dir, *_ = _LAYOUTS[layout]
        if self.layout == "eyepacs" and detect_layout(root) != "eyepacs":
            raise BadInputError(root, "not a Kaggle EyePACS layout: trainLabels.csv not found")
        if layout == "aptos" and not (root / csv_name).is_file():
            raise BadInputError(root, "not an APTOS 2019 layout: train.csv not found")
        if not (root / image_dir).is_dir():
            raise BadInputError(root, f"no {image_dir}/ folder next to {csv_name}")
        train = self._scan_csv(root / csv_name, root / image_dir, layout)
        test = test_csv = None
        for name in _EYEPACS_TEST_CSVS if layout == "eyepacs" else ():
            if (root / name).is_file() and (root / "test").is_dir():
                test, test_csv = self._scan_csv(root / name, root / "test", layout), root / name
                break
        self.problems.close()
        if test is not None and not test:
            raise BadInputError(root / "test", "no usable images found")
        if not train:
            raise BadInputError(root, "no usable images found")
        return Scan(train, test, test_csv)

    def _scan_csv(self, csv_path: Path, image_dir: Path, layout: str) -> list[dict]:
        _, _, id_col, label_col, suffixes = _LAYOUTS[layout]
        entries, seen = [], {}
        for row, ident, text in _read_rows(csv_path, id_col, label_col):
            where = f"{csv_path}: row {row}"
            if not ident:
                self.problems.add(where, f"empty {id_col!r}")
                continue
            if ident in seen:
                self.problems.add(where, f"{ident!r} already listed in row {seen[ident]}")
                continue
            seen[ident] = row
            grade = _parse_grade(text)
            if grade is None:
                self.problems.add(where, f"unknown label {text!r} for {ident!r}; expected a DR grade 0, 1, 2, 3 or 4")
                continue
            m = _EYE.match(ident) if layout == "eyepacs" else None
            if layout == "eyepacs" and not m:
                self.problems.add(where, f"image {ident!r} does not follow <patient>_left / <patient>_right")
                continue
            path = next((image_dir / f"{ident}{s}" for s in suffixes if (image_dir / f"{ident}{s}").exists()),
                        image_dir / f"{ident}{suffixes[0]}")
            reason = _check_image(path)
            if reason:
                self.problems.add(f"{path} ({csv_path.name} row {row})", reason)
                continue
            entries.append({"image": str(path), "label": task_label(grade, self.task), "grade": grade,
                            "patient_id": m.group("pid") if m else ident, "eye": m.group("eye") if m else ""})
        return entries

    def check_datalist(self, datalist: dict[str, list[dict]], path: Path) -> dict[str, list[dict]]:
        """(Re)compute every entry's label for the task from its ``grade``, so one file serves both tasks."""
        for section, entries in datalist.items():
            for e in entries:
                g = _parse_grade(str(e["grade"]).strip())
                if g is None:
                    raise BadInputError(path, f"{section} entry {e['image']}: unknown grade {e['grade']!r}; "
                                              "expected 0, 1, 2, 3 or 4")
                e["grade"], e["label"] = g, task_label(g, self.task)
        return datalist


def index_eyepacs(root: str | os.PathLike, task: str = "grade", val_fraction: float = 0.1, test_fraction: float = 0.1,
                  seed: int = 0, on_bad_input: str = "fail") -> dict[str, list[dict]]:
    """Index a Kaggle EyePACS release into ``{"training", "validation", "test"}`` entries (:class:`FundusIndexer`).

    Raises:
        BadInputError: missing label file or folder, a bad header, or (``"fail"``) bad rows (unknown label,
            malformed image name, duplicate) and missing or broken images, each named with CSV row and reason.
    """
    return FundusIndexer(root, "eyepacs", task, val_fraction, test_fraction, seed, on_bad_input).index()


def index_aptos(root: str | os.PathLike, task: str = "grade", val_fraction: float = 0.1, test_fraction: float = 0.1,
                seed: int = 0, on_bad_input: str = "fail") -> dict[str, list[dict]]:
    """Index an APTOS 2019 release (``train.csv`` + ``train_images/``) into training/validation/test.

    Arguments and errors as :func:`index_eyepacs`.
    """
    return FundusIndexer(root, "aptos", task, val_fraction, test_fraction, seed, on_bad_input).index()


def index_fundus(root: str | os.PathLike, **kwargs) -> dict[str, list[dict]]:
    """Index either layout, detected from the label file (see :func:`detect_layout`)."""
    _check_task(kwargs.get("task", "grade"))
    return FundusIndexer(root, None, **kwargs).index()


def fundus_datalist(dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None = None,
                    task: str = "referable", val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                    on_bad_input: str = "fail") -> dict[str, list[dict]]:
    """What the fundus bundle calls: read ``datalist`` (JSON from ``medplugin datalist eyepacs|aptos``) when
    given, else index ``dataset_dir`` (either layout). Labels are (re)computed for ``task`` from each entry's
    ``grade``, so one datalist file serves both tasks."""
    _check_task(task)
    return FundusIndexer(dataset_dir, None, task, val_fraction, test_fraction, seed, on_bad_input).load(datalist)
