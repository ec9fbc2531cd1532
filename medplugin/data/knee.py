"""Knee MRI datalists: the Stanford MRNet layout and a clinical layout of NIfTI files / DICOM series folders.

Both give MONAI datalists ``{"training": [...], "validation": [...], "test": [...]}`` whose entries are
``{"image": path, "label": int, "patient_id": str}``, split so that no patient is in two parts.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from medplugin.data.datalist import CsvReader, index_knee_inputs, open_text, strip_suffix
from medplugin.data.indexer import DatasetIndexer, Scan
from medplugin.errors import BadInputError

__all__ = [
    "ACL_CLASSES",
    "BINARY_CLASSES",
    "MRNET_TASKS",
    "MRNET_PLANES",
    "MRNetIndexer",
    "KneeIndexer",
    "index_mrnet",
    "index_knee",
    "detect_knee_layout",
    "index_knee_dataset",
    "class_weights",
    "sample_weights",
    "knee_class_names",
    "resolve_label_mode",
    "knee_datalist",
    "index_knee_inputs",
]

logger = logging.getLogger(__name__)

ACL_CLASSES = ("healthy", "minor_strain", "partial_rupture", "complete_rupture")
"""Label order of the clinical knee layout (label ``i`` is ``ACL_CLASSES[i]``); binary mode: 0 healthy, 1 not."""
BINARY_CLASSES = ("healthy", "unhealthy")
MRNET_TASKS = ("acl", "abnormal", "meniscus")
MRNET_PLANES = ("sagittal", "coronal", "axial")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _read_mrnet_csv(csv_path: Path) -> list[tuple[int, str, int]]:
    """Rows ``(row_number, exam_id, label)`` of an MRNet label CSV (``id,label``, no header)."""
    if not csv_path.is_file():
        raise BadInputError(
            csv_path, "label CSV not found; the MRNet layout has <split>-<task>.csv beside train/ and valid/"
        )
    out = []
    with open_text(csv_path) as f:
        for n, row in enumerate(CsvReader(f, csv_path), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 2:
                raise BadInputError(csv_path, f"row {n}: expected 'id,label', got {row!r}")
            raw_id, raw_label = row[0].strip(), row[1].strip()
            if n == 1 and not raw_id.isdigit() and not raw_label.lstrip("-").isdigit():
                logger.info("%s: skipping header row %r (MRNet's CSVs have none)", csv_path, row)
                continue
            if not raw_id.isdigit():
                raise BadInputError(csv_path, f"row {n}: exam id {raw_id!r} is not a number")
            if raw_label not in ("0", "1"):
                raise BadInputError(csv_path, f"row {n}: label {raw_label!r} for exam {raw_id} is not 0 or 1")
            out.append((n, f"{int(raw_id):04d}", int(raw_label)))
    if not out:
        raise BadInputError(csv_path, "label CSV has no rows")
    return out


def _npy_problem(path: Path) -> str | None:
    """Cheap check of an MRNet volume file (nothing is decoded): the reason it is bad, or None."""
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            return "not a NumPy .npy file (bad header)"
    return None


class MRNetIndexer(DatasetIndexer):
    """The Stanford MRNet data set (Bien et al. 2018, PLOS Medicine) for one task and plane.

    Expected layout: ``train/<plane>/0000.npy`` ... ``valid/<plane>/1130.npy`` (planes ``sagittal``,
    ``coronal``, ``axial``) and ``train-<task>.csv`` / ``valid-<task>.csv`` without header, rows ``id,label``
    (tasks ``acl``, ``abnormal``, ``meniscus``; labels 0/1). MRNet's public ``valid/`` set is our ``test``
    part (its real test set is not released); ``validation`` is carved from ``train/`` with a patient-level,
    label-stratified split. MRNet publishes no patient ids (its 1,130 training exams come from 1,088 patients),
    so the zero-padded exam id stands in for the ``patient_id``: the few patients with two exams may have one in
    training and one in validation (the split's log line says so); an exam in both ``train/`` and ``valid/`` is an
    error naming the ``valid-`` CSV. Read the volumes with :func:`medplugin.io.mrnet.read_mrnet_volume`.

    Args:
        root: the folder holding ``train/``, ``valid/`` and the CSVs.
        task: ``"acl"``, ``"abnormal"`` or ``"meniscus"``.
        plane: ``"sagittal"``, ``"coronal"`` or ``"axial"``.
        val_fraction: part of ``train/`` used for validation, in [0, 1) (0 leaves validation empty).
        seed: seed of the split.
        on_bad_input: ``"fail"`` raises at the first duplicate row or bad volume file (missing, empty, not
            ``.npy``); ``"skip"`` leaves those exams out with a warning listing them. A malformed CSV row is
            always an error.
    """

    name = "MRNet"
    fail_fast = True
    test_overlap = "error"
    split_note = ("split by exam: MRNet's 1,130 training exams come from 1,088 patients and no patient ids are "
                  "published, so a patient may have exams in both training and validation")

    def __init__(self, root: str | os.PathLike | None, task: str = "acl", plane: str = "sagittal",
                 val_fraction: float = 0.2, seed: int = 0, on_bad_input: str = "fail") -> None:
        if task not in MRNET_TASKS:
            raise ValueError(f"task must be one of {MRNET_TASKS}, got {task!r}.")
        if plane not in MRNET_PLANES:
            raise ValueError(f"plane must be one of {MRNET_PLANES}, got {plane!r}.")
        super().__init__(root, val_fraction=val_fraction, seed=seed, on_bad_input=on_bad_input)
        self.task, self.plane = task, plane

    def scan(self) -> Scan:
        """Read ``train-<task>.csv`` and ``valid-<task>.csv`` and check the plane's volume files."""
        root = self.root
        if not root.is_dir():
            raise BadInputError(root, "MRNet root folder not found")
        parts = {split: self._scan_split(root / f"{split}-{self.task}.csv", root / split / self.plane)
                 for split in ("train", "valid")}
        return Scan(parts["train"], parts["valid"], root / f"valid-{self.task}.csv")

    def _scan_split(self, csv_path: Path, folder: Path) -> list[dict]:
        entries, seen = [], {}
        for n, eid, label in _read_mrnet_csv(csv_path):
            image = folder / f"{eid}.npy"
            if eid in seen:
                self.problems.add(csv_path, f"row {n}: exam {eid} is listed twice (first on row {seen[eid]})")
                continue
            seen[eid] = n
            if not image.is_file():
                self.problems.add(csv_path, f"row {n}: exam {eid} has no volume file {image}")
            elif (reason := _npy_problem(image)) is not None:
                self.problems.add(image, reason)
            else:
                entries.append({"image": str(image), "label": label, "patient_id": eid})
        return entries


def index_mrnet(root: str | os.PathLike, task: str = "acl", plane: str = "sagittal", val_fraction: float = 0.2,
                seed: int = 0, on_bad_input: str = "fail") -> dict[str, list[dict]]:
    """Index the Stanford MRNet data set for one task and plane (:class:`MRNetIndexer`).

    Returns:
        ``{"training", "validation", "test"}`` -> entries ``{"image": str, "label": int, "patient_id": str}``.

    Raises:
        ValueError: bad ``task``, ``plane`` or ``val_fraction``.
        BadInputError: a missing CSV, a bad row or label (naming the CSV, row and value), a missing volume, or
            an exam id in both ``train/`` and ``valid/``.
    """
    return MRNetIndexer(root, task, plane, val_fraction, seed, on_bad_input).index()


def _find_exam(image_dir: Path, exam: str) -> Path | None:
    folder = image_dir / exam
    if folder.is_dir():
        return folder
    for suffix in _NIFTI_SUFFIXES:
        candidate = image_dir / f"{exam}{suffix}"
        if candidate.is_file():
            return candidate
    if exam.lower().endswith(_NIFTI_SUFFIXES) and (image_dir / exam).is_file():
        return image_dir / exam
    return None


class KneeIndexer(DatasetIndexer):
    """A clinical knee MRI data set: one NIfTI file or one DICOM series folder per exam, and a label CSV.

    Expected layout: ``<root>/<image_dir>/<exam>.nii.gz`` (or ``.nii``, or a folder ``<exam>/`` holding one
    DICOM series) and ``<root>/<labels_csv>`` with a header and columns ``exam,label`` and optionally
    ``patient``. Labels are 0-3 in the order of :data:`ACL_CLASSES` (healthy, minor strain, partial rupture,
    complete rupture). With ``label_mode="binary"`` labels 1-3 become 1 ("unhealthy"). The exam name is the
    patient id unless a ``patient`` column exists; the split keeps every patient in one part and is stratified
    by label. Read the images with :func:`medplugin.io.mrnet.read_knee_volume`.

    Args:
        root: the data set folder.
        label_mode: ``"four"`` (0-3) or ``"binary"`` (0 healthy, 1 unhealthy).
        labels_csv: the CSV file name inside ``root``.
        image_dir: the folder of exams inside ``root``.
        mask_dir: optional folder of ACL masks (``<exam>.nii.gz``) inside ``root``; when given, every exam must
            have one and entries get a ``"mask"`` key.
        val_fraction: fraction of images for validation, in [0, 1).
        test_fraction: fraction of images for test, in [0, 1); ``val_fraction + test_fraction < 1``.
        seed: seed of the split.
        on_bad_input: ``"fail"`` raises at the first bad row (unknown label, missing or empty image, ...);
            ``"skip"`` leaves those exams out with a warning listing them.
    """

    name = "knee MRI"
    fail_fast = True

    def __init__(self, root: str | os.PathLike | None, label_mode: str = "four", labels_csv: str = "labels.csv",
                 image_dir: str = "exams", mask_dir: str | None = None, val_fraction: float = 0.15,
                 test_fraction: float = 0.15, seed: int = 0, on_bad_input: str = "fail") -> None:
        knee_class_names(label_mode)
        super().__init__(root, val_fraction, test_fraction, seed, on_bad_input)
        self.label_mode, self.labels_csv, self.image_dir, self.mask_dir = label_mode, labels_csv, image_dir, mask_dir

    def scan(self) -> Scan:
        """Read the label CSV and find each exam's image (and mask)."""
        csv_path = self.root / self.labels_csv
        images = self.root / self.image_dir
        if not csv_path.is_file():
            raise BadInputError(csv_path, "label CSV not found (expected columns exam,label[,patient])")
        if not images.is_dir():
            raise BadInputError(images, "exam folder not found (one NIfTI file or DICOM series folder per exam)")
        masks = self.root / self.mask_dir if self.mask_dir is not None else None
        entries, seen = [], {}
        with open_text(csv_path) as f:
            reader = csv.DictReader(f)
            reader.reader = CsvReader(f, csv_path)  # parse errors name the file and line
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in ("exam", "label") if c not in columns]
            if missing:
                raise BadInputError(csv_path,
                                    f"missing column(s) {missing}; found {columns}, need exam,label[,patient]")
            for n, raw in enumerate(reader, start=2):  # row 1 is the header
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                try:
                    entries.append(self._entry(row, n, seen, csv_path, images, masks))
                except BadInputError as e:
                    self.problems.add(e.path, e.reason)
        self.problems.close()
        if not entries:
            raise BadInputError(csv_path, "label CSV has no rows")
        return Scan(entries)

    def _entry(self, row: dict, n: int, seen: dict, csv_path: Path, images: Path, masks: Path | None) -> dict:
        exam, value = strip_suffix(row["exam"], _NIFTI_SUFFIXES), row["label"]
        if not exam:
            raise BadInputError(csv_path, f"row {n}: empty exam name")
        if exam in seen:
            raise BadInputError(csv_path, f"row {n}: exam {exam!r} is listed twice (first on row {seen[exam]})")
        seen[exam] = n
        if value not in ("0", "1", "2", "3"):
            raise BadInputError(
                csv_path,
                f"row {n}: label {value!r} of exam {exam!r} is not one of 0-3 "
                f"({', '.join(f'{i}={c}' for i, c in enumerate(ACL_CLASSES))})",
            )
        image = _find_exam(images, exam)
        if image is None:
            raise BadInputError(
                csv_path,
                f"row {n}: exam {exam!r} has no image: looked for {images / exam}.nii.gz, .nii and a DICOM "
                "series folder",
            )
        if image.is_file() and image.stat().st_size == 0:
            raise BadInputError(image, "empty file (0 bytes)")
        patient = row.get("patient", "") if "patient" in row else exam
        if not patient:
            raise BadInputError(csv_path, f"row {n}: empty patient for exam {exam!r}")
        label = int(value) if self.label_mode == "four" else int(int(value) >= 1)
        entry = {"image": str(image), "label": label, "patient_id": patient}
        if masks is not None:
            mask = _find_exam(masks, exam)
            if mask is None or mask.is_dir():
                raise BadInputError(csv_path, f"row {n}: exam {exam!r} has no mask {masks / exam}.nii.gz")
            entry["mask"] = str(mask)
        return entry

    def check_datalist(self, datalist: dict[str, list[dict]], path: Path) -> dict[str, list[dict]]:
        """A datalist JSON is used as written; with ``label_mode="binary"`` labels above 1 are merged to 1."""
        if self.label_mode == "binary":
            return {k: [{**e, "label": int(int(e["label"]) >= 1)} for e in v] for k, v in datalist.items()}
        return datalist


def index_knee(root: str | os.PathLike, label_mode: str = "four", labels_csv: str = "labels.csv",
               image_dir: str = "exams", mask_dir: str | None = None, val_fraction: float = 0.15,
               test_fraction: float = 0.15, seed: int = 0, on_bad_input: str = "fail") -> dict[str, list[dict]]:
    """Index a clinical knee MRI data set (:class:`KneeIndexer`).

    Returns:
        ``{"training", "validation", "test"}`` -> entries ``{"image": str, "label": int, "patient_id": str}``
        (plus ``"mask"`` with ``mask_dir``).

    Raises:
        ValueError: bad ``label_mode`` or fractions.
        BadInputError: a missing CSV or column, an empty or duplicate exam, an unknown label, or a missing image
            or mask (naming the CSV, row and value).
    """
    return KneeIndexer(root, label_mode, labels_csv, image_dir, mask_dir, val_fraction, test_fraction, seed,
                       on_bad_input).index()


def detect_knee_layout(root: str | os.PathLike) -> str:
    """Tell which knee layout ``root`` holds: ``"mrnet"`` (``train-<task>.csv`` or ``train/<plane>/``) or
    ``"knee"`` (``labels.csv``).

    Args:
        root: the data set folder.

    Raises:
        BadInputError: the folder is missing or holds neither layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(root, "data set folder not found")
    if any((root / f"train-{t}.csv").is_file() for t in MRNET_TASKS) or any(
        (root / "train" / p).is_dir() for p in MRNET_PLANES
    ):
        return "mrnet"
    if (root / "labels.csv").is_file():
        return "knee"
    raise BadInputError(
        root,
        "neither the MRNet layout (train-acl.csv, train/sagittal/0000.npy, ...) nor the clinical knee layout "
        "(labels.csv with exam,label and an exams/ folder)",
    )


def index_knee_dataset(root: str | os.PathLike, **kwargs) -> dict[str, list[dict]]:
    """Index ``root`` with :func:`index_mrnet` or :func:`index_knee`, as :func:`detect_knee_layout` finds.

    Args:
        root: the data set folder.
        kwargs: passed to the chosen indexer (e.g. ``task``/``plane`` for MRNet, ``label_mode`` for the clinical
            layout; ``val_fraction`` and ``seed`` for both).
    """
    layout = detect_knee_layout(root)
    return index_mrnet(root, **kwargs) if layout == "mrnet" else index_knee(root, **kwargs)


def _labels(entries: Sequence[dict], num_classes: int) -> list[int]:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    labels = []
    for i, e in enumerate(entries):
        label = e.get("label")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
            raise ValueError(f"entry {i} has label {label!r}, expected an int in [0, {num_classes}).")
        labels.append(label)
    if not labels:
        raise ValueError("entries is empty: no labels to weight.")
    return labels


def class_weights(entries: Sequence[dict], num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights for a weighted loss, e.g. ``CrossEntropyLoss(weight=...)``.

    ``w_c = N / (K * n_c)`` over the ``K`` classes present (``n_c`` images of class ``c``, ``N`` in all),
    normalised so that the mean weight per image is 1 (the loss keeps its scale); absent classes get 0.

    Args:
        entries: datalist entries with an int ``"label"``.
        num_classes: the number of classes.

    Returns:
        ``float32`` tensor of shape ``(num_classes,)``.

    Raises:
        ValueError: no entries, or a label outside ``[0, num_classes)``.
    """
    labels = _labels(entries, num_classes)
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).double()
    present = counts > 0
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = len(labels) / (int(present.sum()) * counts[present])
    if not present.all():
        logger.warning("classes %s have no examples; their weight is 0", torch.nonzero(~present).flatten().tolist())
    return weights.float()


def sample_weights(entries: Sequence[dict], num_classes: int | None = None) -> list[float]:
    """Per-entry weights ``1 / n_label`` for ``torch.utils.data.WeightedRandomSampler``.

    Every class then has the same total weight, so the sampler draws the classes equally often.

    Args:
        entries: datalist entries with an int ``"label"``.
        num_classes: the number of classes (default: largest label + 1).

    Raises:
        ValueError: no entries, or a label that is not an int in ``[0, num_classes)``.
    """
    if num_classes is None:
        num_classes = max((e.get("label") for e in entries if isinstance(e.get("label"), int)), default=0) + 1
    labels = _labels(entries, num_classes)
    counts = Counter(labels)
    return [1.0 / counts[label] for label in labels]


def knee_class_names(label_mode: str = "four") -> list[str]:
    """Class names in output order: :data:`ACL_CLASSES` (``"four"``) or :data:`BINARY_CLASSES` (``"binary"``)."""
    if label_mode not in ("four", "binary"):
        raise ValueError(f"label_mode must be 'four' or 'binary', got {label_mode!r}.")
    return list(ACL_CLASSES if label_mode == "four" else BINARY_CLASSES)


def resolve_label_mode(label_mode: str, dataset_dir: str | os.PathLike | None,
                       datalist: str | os.PathLike | None = None) -> str:
    """The label mode a run uses: ``"auto"`` lets the data decide (logged): ``"binary"`` on the MRNet layout (its
    labels are binary), ``"four"`` on the clinical layout or with a datalist JSON; ``"four"``/``"binary"`` as given.

    Raises:
        ValueError: an unknown ``label_mode``.
        BadInputError: ``"auto"`` with a dataset folder that is missing or holds neither layout.
    """
    if label_mode != "auto":
        knee_class_names(label_mode)
        return label_mode
    if datalist:
        logger.info("label_mode auto: four (a datalist JSON; set --label_mode binary for MRNet's binary labels)")
        return "four"
    mrnet = detect_knee_layout(dataset_dir) == "mrnet"
    logger.info("label_mode auto: %s", "binary (the MRNet layout's labels are binary)" if mrnet
                else "four (the clinical layout's four ACL conditions; --label_mode binary merges 1-3)")
    return "binary" if mrnet else "four"


def knee_datalist(dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None = None, label_mode: str = "four",
                  task: str = "acl", plane: str = "sagittal", val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0, on_bad_input: str = "fail") -> dict[str, list[dict]]:
    """What the knee classification bundle calls: read ``datalist`` when given, else index ``dataset_dir``.

    The layout is detected (:func:`detect_knee_layout`). MRNet labels are binary (``task`` tear / abnormal
    or not), so the MRNet layout needs ``label_mode="binary"``; its ``valid/`` is the test part and
    ``test_fraction`` is unused. The clinical layout gives labels 0-3, merged to 0/1 with ``"binary"``.
    A datalist JSON (``medplugin datalist mrnet|knee``) is used as written; with ``label_mode="binary"``
    labels above 1 are merged to 1 there too.

    Raises:
        ValueError: ``label_mode="four"`` on the MRNet layout, or bad arguments.
        BadInputError: as the indexers, naming the file and reason.
    """
    knee_class_names(label_mode)
    if not datalist and detect_knee_layout(dataset_dir) == "mrnet":
        if label_mode != "binary":
            raise ValueError(
                f"{dataset_dir}: the MRNet layout has binary labels ({task} or not); run with --label_mode binary."
            )
        return MRNetIndexer(dataset_dir, task, plane, val_fraction, seed, on_bad_input).index()
    return KneeIndexer(dataset_dir, label_mode, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                       on_bad_input=on_bad_input).load(datalist)
