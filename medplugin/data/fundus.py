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
from collections import Counter
from pathlib import Path

from medplugin.data.splits import assert_disjoint_patients, patient_level_split
from medplugin.errors import BadInputError

__all__ = [
    "GRADE_NAMES",
    "REFERABLE_NAMES",
    "TASKS",
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


def _find_image(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path:
    for s in suffixes:
        if (folder / f"{stem}{s}").exists():
            return folder / f"{stem}{s}"
    return folder / f"{stem}{suffixes[0]}"


def _index_csv(csv_path: Path, image_dir: Path, id_col: str, label_col: str, suffixes: tuple[str, ...],
               eyepacs: bool, task: str, problems: list[tuple[str, str]]) -> list[dict]:
    entries, seen = [], {}
    for row, ident, text in _read_rows(csv_path, id_col, label_col):
        where = f"{csv_path}: row {row}"
        if not ident:
            problems.append((where, f"empty {id_col!r}"))
            continue
        if ident in seen:
            problems.append((where, f"{ident!r} already listed in row {seen[ident]}"))
            continue
        seen[ident] = row
        grade = _parse_grade(text)
        if grade is None:
            problems.append((where, f"unknown label {text!r} for {ident!r}; expected a DR grade 0, 1, 2, 3 or 4"))
            continue
        if eyepacs:
            m = _EYE.match(ident)
            if not m:
                problems.append((where, f"image {ident!r} does not follow <patient>_left / <patient>_right"))
                continue
            pid, eye = m.group("pid"), m.group("eye")
        else:
            pid, eye = ident, ""
        path = _find_image(image_dir, ident, suffixes)
        reason = _check_image(path)
        if reason:
            problems.append((f"{path} ({csv_path.name} row {row})", reason))
            continue
        entries.append({"image": str(path), "label": task_label(grade, task), "grade": grade,
                        "patient_id": pid, "eye": eye})
    return entries


def _report(root: Path, problems: list[tuple[str, str]], on_bad_input: str) -> None:
    if not problems:
        return
    listing = "\n".join(f"  {p}: {r}" for p, r in problems[:50])
    more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
    if on_bad_input == "fail":
        raise BadInputError(root, f"{len(problems)} bad item(s) (on_bad_input='fail'):\n{listing}{more}")
    logger.warning("skipping %d bad item(s) of %s:\n%s%s", len(problems), root, listing, more)


def _split(root: Path, train: list[dict], test: list[dict] | None, val_fraction: float, test_fraction: float,
           seed: int) -> dict[str, list[dict]]:
    if not train:
        raise BadInputError(root, "no usable images found")
    if test is None:
        fr = {"training": 1 - val_fraction - test_fraction, "validation": val_fraction, "test": test_fraction}
        if fr["training"] <= 0:
            raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}.")
        datalist = patient_level_split(train, fr, seed=seed, stratify_key="grade")
    else:
        test_patients = {e["patient_id"] for e in test}
        overlap = {e["patient_id"] for e in train} & test_patients
        if overlap:
            logger.warning("%d patient(s) of the test part also appear in training: left out of training", len(overlap))
            train = [e for e in train if e["patient_id"] not in test_patients]
        split = patient_level_split(train, {"training": 1 - val_fraction, "validation": val_fraction}, seed=seed,
                                    stratify_key="grade")
        datalist = {"training": split["training"], "validation": split["validation"], "test": test}
    assert_disjoint_patients(datalist)
    for name, entries in datalist.items():
        counts = Counter(e["grade"] for e in entries)
        logger.info("%s: %d images, grades %s", name, len(entries), ", ".join(f"{g}={counts.get(g, 0)}" for g in range(5)))
    return datalist


def _check_args(val_fraction: float, test_fraction: float, on_bad_input: str, task: str) -> None:
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    if on_bad_input not in ("fail", "skip"):
        raise ValueError(f"on_bad_input must be 'fail' or 'skip', got {on_bad_input!r}.")
    _check_task(task)


def index_eyepacs(
    root: str | os.PathLike,
    task: str = "grade",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    on_bad_input: str = "fail",
) -> dict[str, list[dict]]:
    """Index a Kaggle EyePACS release into ``{"training", "validation", "test"}`` datalist entries.

    Validation (and test, when the release has no labelled test part) are carved by patient, stratified by
    each patient's most frequent grade, so both eyes of a patient are always in one split. Files are checked
    cheaply (present, non-empty, JPEG/PNG header); nothing is decoded.

    Args:
        root: folder holding ``trainLabels.csv`` and ``train/``.
        task: ``"grade"`` (label = grade 0-4) or ``"referable"`` (label = grade >= 2).
        val_fraction: share of the training patients held out for validation.
        test_fraction: share held out for test when no ``testLabels.csv``/``retinopathy_solution.csv`` is there.
        seed: seed of the split.
        on_bad_input: ``"fail"`` raises one error listing every bad row/file; ``"skip"`` logs and leaves them out.

    Raises:
        BadInputError: missing label file or folder, a bad header, or (``"fail"``) bad rows (unknown label,
            malformed image name, duplicate) and missing or broken images, each named with CSV row and reason.
    """
    _check_args(val_fraction, test_fraction, on_bad_input, task)
    root = Path(root)
    if detect_layout(root) != "eyepacs":
        raise BadInputError(root, "not a Kaggle EyePACS layout: trainLabels.csv not found")
    if not (root / "train").is_dir():
        raise BadInputError(root, "no train/ folder next to trainLabels.csv")
    problems: list[tuple[str, str]] = []
    suffixes = (".jpeg", ".jpg", ".png")
    train = _index_csv(root / "trainLabels.csv", root / "train", "image", "level", suffixes, True, task, problems)
    test = None
    for name in _EYEPACS_TEST_CSVS:
        if (root / name).is_file() and (root / "test").is_dir():
            test = _index_csv(root / name, root / "test", "image", "level", suffixes, True, task, problems)
            break
    _report(root, problems, on_bad_input)
    if test is not None and not test:
        raise BadInputError(root / "test", "no usable images found")
    return _split(root, train, test, val_fraction, test_fraction, seed)


def index_aptos(
    root: str | os.PathLike,
    task: str = "grade",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    on_bad_input: str = "fail",
) -> dict[str, list[dict]]:
    """Index an APTOS 2019 release (``train.csv`` + ``train_images/``) into training/validation/test.

    APTOS's own ``test.csv`` has no labels, so validation and test are carved from ``train.csv``; with no
    patient ids each image is its own patient. Arguments and errors as :func:`index_eyepacs`.
    """
    _check_args(val_fraction, test_fraction, on_bad_input, task)
    root = Path(root)
    if not (root / "train.csv").is_file():
        raise BadInputError(root, "not an APTOS 2019 layout: train.csv not found")
    if not (root / "train_images").is_dir():
        raise BadInputError(root, "no train_images/ folder next to train.csv")
    problems: list[tuple[str, str]] = []
    train = _index_csv(root / "train.csv", root / "train_images", "id_code", "diagnosis", (".png", ".jpg", ".jpeg"),
                       False, task, problems)
    _report(root, problems, on_bad_input)
    return _split(root, train, None, val_fraction, test_fraction, seed)


def index_fundus(root: str | os.PathLike, **kwargs) -> dict[str, list[dict]]:
    """Index either layout, detected from the label file (see :func:`detect_layout`)."""
    _check_task(kwargs.get("task", "grade"))
    layout = detect_layout(root)
    logger.info("%s: %s layout", root, "Kaggle EyePACS" if layout == "eyepacs" else "APTOS 2019")
    return (index_eyepacs if layout == "eyepacs" else index_aptos)(root, **kwargs)


def fundus_datalist(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    task: str = "referable",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    on_bad_input: str = "fail",
) -> dict[str, list[dict]]:
    """What the fundus bundle calls: read ``datalist`` (JSON from ``medplugin datalist eyepacs|aptos``) when
    given, else index ``dataset_dir`` (either layout). Labels are (re)computed for ``task`` from each entry's
    ``grade``, so one datalist file serves both tasks."""
    _check_task(task)
    if datalist:
        from medplugin.data.datalist import read_datalist

        dl = read_datalist(datalist, required_keys=("image", "grade"), sections=("training", "validation", "test"))
        for section, entries in dl.items():
            for e in entries:
                g = _parse_grade(str(e["grade"]).strip())
                if g is None:
                    raise BadInputError(datalist, f"{section} entry {e['image']}: unknown grade {e['grade']!r}; "
                                                  "expected 0, 1, 2, 3 or 4")
                e["grade"], e["label"] = g, task_label(g, task)
        return dl
    return index_fundus(dataset_dir, task=task, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                        on_bad_input=on_bad_input)
