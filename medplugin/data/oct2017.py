"""Kermany OCT2017 (CNV, DME, DRUSEN, NORMAL) -> MONAI datalist with a patient-level validation split.

Layout: ``OCT2017/{train,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patientID>-<n>.jpeg`` (Kermany et al.,
"Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning", Cell 2018).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

from medplugin.data.splits import assert_disjoint_patients, patient_level_split
from medplugin.errors import BadInputError

__all__ = ["CLASSES", "parse_oct_name", "index_oct2017", "oct2017_datalist"]

logger = logging.getLogger(__name__)

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
_NAME = re.compile(r"^(?P<cls>[A-Z]+)-(?P<pid>[0-9A-Za-z]+)-(?P<n>\d+)\.jpe?g$", re.IGNORECASE)
_JPEG_MAGIC = b"\xff\xd8\xff"


def parse_oct_name(name: str) -> tuple[str, str]:
    """``"CNV-1016042-1.jpeg"`` -> ``("CNV", "1016042")``; ``ValueError`` for any other pattern."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"file name {name!r} does not follow <CLASS>-<patientID>-<n>.jpeg")
    return m.group("cls").upper(), m.group("pid")


def _scan_split(split_dir: Path, problems: list[tuple[str, str]]) -> list[dict]:
    entries = []
    with os.scandir(split_dir) as it:
        class_dirs = sorted(it, key=lambda e: e.name)
    for d in class_dirs:
        if d.name.startswith("."):
            continue
        if not d.is_dir():
            problems.append((d.path, "unexpected file next to the class folders"))
            continue
        if d.name not in CLASSES:
            problems.append((d.path, f"unknown class folder {d.name!r}; expected one of {list(CLASSES)}"))
            continue
        label = CLASSES.index(d.name)
        with os.scandir(d.path) as files:
            for f in sorted(files, key=lambda e: e.name):
                if f.name.startswith(".") or not f.is_file():
                    continue
                try:
                    cls, pid = parse_oct_name(f.name)
                except ValueError as e:
                    problems.append((f.path, str(e)))
                    continue
                if cls != d.name:
                    problems.append((f.path, f"file name says {cls} but it is in the {d.name} folder"))
                    continue
                if f.stat().st_size == 0:
                    problems.append((f.path, "empty file (0 bytes)"))
                    continue
                with open(f.path, "rb") as fh:
                    if fh.read(3) != _JPEG_MAGIC:
                        problems.append((f.path, "not a JPEG file (bad header)"))
                        continue
                entries.append({"image": f.path, "label": label, "patient_id": pid})
    return entries


def index_oct2017(
    root: str | os.PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_bad_input: str = "fail",
    exclude_test_patients: bool = True,
) -> dict[str, list[dict]]:
    """Index an OCT2017 release into ``{"training", "validation", "test"}`` datalist entries.

    Each entry is ``{"image": path, "label": class index in CLASSES, "patient_id": str}``. Validation is
    carved from ``train/`` by patient (stratified by each patient's main class), so no patient is in both.
    Files are checked cheaply (name pattern, class folder, non-empty, JPEG header); nothing is decoded.

    Args:
        root: the folder holding ``train/`` and ``test/``.
        val_fraction: fraction of ``train/`` images (by patient) for validation, in (0, 1).
        seed: seed of the split; the same seed gives the same split.
        on_bad_input: ``"fail"`` raises one error listing every bad file; ``"skip"`` logs and leaves them out.
        exclude_test_patients: drop from training/validation the patients that also appear in ``test/``
            (the public release has some), so no patient is in two splits.

    Raises:
        BadInputError: missing folders, no images, or (with ``"fail"``) bad files, each named with its reason.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
    if on_bad_input not in ("fail", "skip"):
        raise ValueError(f"on_bad_input must be 'fail' or 'skip', got {on_bad_input!r}.")
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(root, "dataset folder not found")
    problems: list[tuple[str, str]] = []
    parts = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise BadInputError(root, f"no {split}/ folder: expected the OCT2017 layout {split}/{{{','.join(CLASSES)}}}/")
        parts[split] = _scan_split(root / split, problems)
    if problems:
        listing = "\n".join(f"  {p}: {r}" for p, r in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        if on_bad_input == "fail":
            raise BadInputError(root, f"{len(problems)} bad item(s) (on_bad_input='fail'):\n{listing}{more}")
        logger.warning("skipping %d bad item(s) of %s:\n%s%s", len(problems), root, listing, more)
    for split, entries in parts.items():
        if not entries:
            raise BadInputError(root / split, "no usable images found")

    test_patients = {e["patient_id"] for e in parts["test"]}
    train = parts["train"]
    overlap = {e["patient_id"] for e in train} & test_patients
    if overlap:
        if exclude_test_patients:
            train = [e for e in train if e["patient_id"] not in test_patients]
            logger.warning("%d patient(s) of test/ also appear in train/: their train images are left out", len(overlap))
        else:
            logger.warning("%d patient(s) appear in both train/ and test/", len(overlap))
    split = patient_level_split(train, {"training": 1 - val_fraction, "validation": val_fraction}, seed=seed)
    datalist = {"training": split["training"], "validation": split["validation"], "test": parts["test"]}
    if exclude_test_patients:
        assert_disjoint_patients(datalist)
    for name, entries in datalist.items():
        counts = Counter(CLASSES[e["label"]] for e in entries)
        logger.info("%s: %d images, %s", name, len(entries), ", ".join(f"{c}={counts.get(c, 0)}" for c in CLASSES))
    return datalist


def oct2017_datalist(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_bad_input: str = "fail",
) -> dict[str, list[dict]]:
    """What a bundle config calls: read ``datalist`` (JSON written by ``medplugin datalist oct2017``) when
    given, else index ``dataset_dir`` directly. Relative image paths in the JSON are taken relative to it."""
    if datalist:
        from medplugin.data.datalist import read_datalist

        return read_datalist(datalist, required_keys=("image", "label"), sections=("training", "validation", "test"))
    return index_oct2017(dataset_dir, val_fraction=val_fraction, seed=seed, on_bad_input=on_bad_input)
