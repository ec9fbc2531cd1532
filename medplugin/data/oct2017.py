"""Kermany OCT2017 (CNV, DME, DRUSEN, NORMAL) -> MONAI datalist with a patient-level validation split.

Layout: ``OCT2017/{train,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patientID>-<n>.jpeg`` (Kermany et al.,
"Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning", Cell 2018).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from medplugin.data.indexer import DatasetIndexer, Scan
from medplugin.errors import BadInputError

__all__ = ["CLASSES", "Oct2017Indexer", "parse_oct_name", "index_oct2017", "oct2017_datalist"]

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
_NAME = re.compile(r"^(?P<cls>[A-Z]+)-(?P<pid>[0-9A-Za-z]+)-(?P<n>\d+)\.jpe?g$", re.IGNORECASE)
_JPEG_MAGIC = b"\xff\xd8\xff"


def parse_oct_name(name: str) -> tuple[str, str]:
    """``"CNV-1016042-1.jpeg"`` -> ``("CNV", "1016042")``; ``ValueError`` for any other pattern."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"file name {name!r} does not follow <CLASS>-<patientID>-<n>.jpeg")
    return m.group("cls").upper(), m.group("pid")


class Oct2017Indexer(DatasetIndexer):
    """OCT2017: ``train/`` split by patient into training and validation; ``test/`` is the test part.

    Entries are ``{"image": path, "label": class index in CLASSES, "patient_id": str}``. Files are checked
    cheaply (name pattern, class folder, non-empty, JPEG header); nothing is decoded.

    Args:
        root: the folder holding ``train/`` and ``test/``.
        val_fraction: fraction of ``train/`` images (by patient) for validation, in (0, 1).
        seed: seed of the split.
        on_bad_input: ``"fail"`` raises one error listing every bad file; ``"skip"`` logs and leaves them out.
        exclude_test_patients: drop from training/validation the patients that also appear in ``test/`` (the
            public release has some); False keeps them (with a warning).
    """

    name = "OCT2017"
    zero_validation = False

    def __init__(self, root: str | os.PathLike | None, val_fraction: float = 0.1, seed: int = 0,
                 on_bad_input: str = "fail", exclude_test_patients: bool = True) -> None:
        super().__init__(root, val_fraction=val_fraction, seed=seed, on_bad_input=on_bad_input)
        self.test_overlap = "exclude" if exclude_test_patients else "keep"

    def scan(self) -> Scan:
        """Scan ``train/`` and ``test/`` (see the class docstring)."""
        root = self.root
        if not root.is_dir():
            raise BadInputError(root, "dataset folder not found")
        parts = {}
        for split in ("train", "test"):
            if not (root / split).is_dir():
                layout = f"{split}/{{{','.join(CLASSES)}}}/"
                raise BadInputError(root, f"no {split}/ folder: expected the OCT2017 layout {layout}")
            parts[split] = self._scan_split(root / split)
        self.problems.close()
        for split, entries in parts.items():
            if not entries:
                raise BadInputError(root / split, "no usable images found")
        return Scan(parts["train"], parts["test"], root / "test")

    def _scan_split(self, split_dir: Path) -> list[dict]:
        entries = []
        with os.scandir(split_dir) as it:
            class_dirs = sorted(it, key=lambda e: e.name)
        for d in class_dirs:
            if d.name.startswith("."):
                continue
            if not d.is_dir():
                self.problems.add(d.path, "unexpected file next to the class folders")
            elif d.name not in CLASSES:
                self.problems.add(d.path, f"unknown class folder {d.name!r}; expected one of {list(CLASSES)}")
            else:
                with os.scandir(d.path) as files:
                    entries += [e for f in sorted(files, key=lambda e: e.name) if (e := self._entry(f, d.name))]
        return entries

    def _entry(self, f: os.DirEntry, folder: str) -> dict | None:
        if f.name.startswith(".") or not f.is_file():
            return None
        try:
            cls, pid = parse_oct_name(f.name)
        except ValueError as e:
            return self.problems.add(f.path, str(e))  # add() returns None: the file is left out
        if cls != folder:
            return self.problems.add(f.path, f"file name says {cls} but it is in the {folder} folder")
        if f.stat().st_size == 0:
            return self.problems.add(f.path, "empty file (0 bytes)")
        with open(f.path, "rb") as fh:
            if fh.read(3) != _JPEG_MAGIC:
                return self.problems.add(f.path, "not a JPEG file (bad header)")
        return {"image": f.path, "label": CLASSES.index(folder), "patient_id": pid}


def index_oct2017(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0, on_bad_input: str = "fail",
                  exclude_test_patients: bool = True) -> dict[str, list[dict]]:
    """Index an OCT2017 release into ``{"training", "validation", "test"}`` datalist entries (:class:`Oct2017Indexer`).

    Raises:
        ValueError: ``val_fraction`` not in (0, 1) or a bad ``on_bad_input``.
        BadInputError: missing folders, no images, or (with ``"fail"``) bad files, each named with its reason.
    """
    return Oct2017Indexer(root, val_fraction, seed, on_bad_input, exclude_test_patients).index()


def oct2017_datalist(dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None = None,
                     val_fraction: float = 0.1, seed: int = 0, on_bad_input: str = "fail") -> dict[str, list[dict]]:
    """What a bundle config calls: read ``datalist`` (JSON written by ``medplugin datalist oct2017``) when
    given, else index ``dataset_dir`` directly. Relative image paths in the JSON are taken relative to it."""
    return Oct2017Indexer(dataset_dir, val_fraction, seed, on_bad_input).load(datalist)
