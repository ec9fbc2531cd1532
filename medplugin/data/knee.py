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

from medplugin.data.datalist import CsvReader, open_text
from medplugin.data.splits import assert_disjoint_patients, patient_level_split
from medplugin.errors import BadInputError

__all__ = [
    "ACL_CLASSES",
    "BINARY_CLASSES",
    "MRNET_TASKS",
    "MRNET_PLANES",
    "index_mrnet",
    "index_knee",
    "detect_knee_layout",
    "index_knee_dataset",
    "class_weights",
    "sample_weights",
    "knee_class_names",
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


def _split_parts(
    entries: list[dict], fractions: dict[str, float], seed: int, stratify: bool = True
) -> dict[str, list[dict]]:
    """``patient_level_split`` that also accepts zero fractions (those parts come back empty)."""
    used = {k: v for k, v in fractions.items() if v > 0}
    parts = patient_level_split(entries, used, seed=seed, stratify_key="label" if stratify else None)
    return {k: parts.get(k, []) for k in fractions}


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}.")


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


def _check_on_bad_input(value: str) -> None:
    if value not in ("fail", "skip"):
        raise ValueError(f"on_bad_input must be 'fail' or 'skip', got {value!r}.")


def _bad(error: BadInputError, on_bad_input: str, problems: list) -> None:
    """``fail``: raise ``error``; ``skip``: remember it (the caller leaves the item out)."""
    if on_bad_input == "fail":
        raise error
    problems.append(error)


def _report_skipped(root: Path, problems: list) -> None:
    if problems:
        listing = "\n".join(f"  {e}" for e in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        logger.warning("skipping %d bad item(s) of %s (on_bad_input='skip'):\n%s%s", len(problems), root, listing, more)


def _check_npy(path: Path) -> None:
    """Cheap check of an MRNet volume file (nothing is decoded): not empty, NumPy header."""
    if path.stat().st_size == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise BadInputError(path, "not a NumPy .npy file (bad header)")


def index_mrnet(
    root: str | os.PathLike, task: str = "acl", plane: str = "sagittal", val_fraction: float = 0.2, seed: int = 0,
    on_bad_input: str = "fail",
) -> dict[str, list[dict]]:
    """Index the Stanford MRNet data set (Bien et al. 2018, PLOS Medicine) for one task and plane.

    Expected layout: ``train/<plane>/0000.npy`` ... ``valid/<plane>/1130.npy`` (planes ``sagittal``,
    ``coronal``, ``axial``) and ``train-<task>.csv`` / ``valid-<task>.csv`` without header, rows ``id,label``
    (tasks ``acl``, ``abnormal``, ``meniscus``; labels 0/1). MRNet's public ``valid/`` set is our ``test``
    part (its real test set is not released); ``validation`` is carved from ``train/`` with a patient-level,
    label-stratified split. In MRNet each exam is one patient, so the zero-padded exam id is the
    ``patient_id``. Read the volumes with :func:`medplugin.io.mrnet.read_mrnet_volume`.

    Args:
        root: the folder holding ``train/``, ``valid/`` and the CSVs.
        task: ``"acl"``, ``"abnormal"`` or ``"meniscus"``.
        plane: ``"sagittal"``, ``"coronal"`` or ``"axial"``.
        val_fraction: part of ``train/`` used for validation, in [0, 1) (0 leaves validation empty).
        seed: seed of the split.
        on_bad_input: ``"fail"`` raises at the first bad row or volume file (missing, empty, not ``.npy``);
            ``"skip"`` leaves those exams out with a warning listing them.

    Returns:
        ``{"training", "validation", "test"}`` -> entries ``{"image": str, "label": int, "patient_id": str}``.

    Raises:
        ValueError: bad ``task``, ``plane`` or ``val_fraction``, or an exam id in both ``train/`` and ``valid/``.
        BadInputError: a missing CSV, a bad row or label (naming the CSV, row and value), or a missing volume.
    """
    if task not in MRNET_TASKS:
        raise ValueError(f"task must be one of {MRNET_TASKS}, got {task!r}.")
    if plane not in MRNET_PLANES:
        raise ValueError(f"plane must be one of {MRNET_PLANES}, got {plane!r}.")
    _check_fraction("val_fraction", val_fraction)
    _check_on_bad_input(on_bad_input)
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(root, "MRNet root folder not found")
    parts: dict[str, list[dict]] = {}
    problems: list[BadInputError] = []
    for split in ("train", "valid"):
        csv_path = root / f"{split}-{task}.csv"
        entries, seen = [], {}
        for n, eid, label in _read_mrnet_csv(csv_path):
            try:
                if eid in seen:
                    raise BadInputError(csv_path, f"row {n}: exam {eid} is listed twice (first on row {seen[eid]})")
                seen[eid] = n
                image = root / split / plane / f"{eid}.npy"
                if not image.is_file():
                    raise BadInputError(csv_path, f"row {n}: exam {eid} has no volume file {image}")
                _check_npy(image)
            except BadInputError as e:
                _bad(e, on_bad_input, problems)
                continue
            entries.append({"image": str(image), "label": label, "patient_id": eid})
        parts[split] = entries
    _report_skipped(root, problems)
    out = _split_parts(parts["train"], {"training": 1 - val_fraction, "validation": val_fraction}, seed)
    out["test"] = parts["valid"]
    assert_disjoint_patients(out)
    logger.info(
        "MRNet %s/%s: %s; split by exam: MRNet's 1,130 training exams come from 1,088 patients and no patient ids "
        "are published, so a patient may have exams in both training and validation", task, plane,
        ", ".join(f"{k}={len(v)}" for k, v in out.items()),
    )
    return out


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


def _strip_exam(name: str) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def index_knee(
    root: str | os.PathLike,
    label_mode: str = "four",
    labels_csv: str = "labels.csv",
    image_dir: str = "exams",
    mask_dir: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    on_bad_input: str = "fail",
) -> dict[str, list[dict]]:
    """Index a clinical knee MRI data set: one NIfTI file or one DICOM series folder per exam, and a label CSV.

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

    Returns:
        ``{"training", "validation", "test"}`` -> entries ``{"image": str, "label": int, "patient_id": str}``
        (plus ``"mask"`` with ``mask_dir``).

    Raises:
        ValueError: bad ``label_mode`` or fractions.
        BadInputError: a missing CSV or column, an empty or duplicate exam, an unknown label, or a missing image
            or mask (naming the CSV, row and value).
    """
    if label_mode not in ("four", "binary"):
        raise ValueError(f"label_mode must be 'four' or 'binary', got {label_mode!r}.")
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction} = "
            f"{val_fraction + test_fraction}."
        )
    root = Path(root)
    csv_path = root / labels_csv
    images = root / image_dir
    if not csv_path.is_file():
        raise BadInputError(csv_path, "label CSV not found (expected columns exam,label[,patient])")
    if not images.is_dir():
        raise BadInputError(images, "exam folder not found (one NIfTI file or DICOM series folder per exam)")
    masks = root / mask_dir if mask_dir is not None else None
    _check_on_bad_input(on_bad_input)
    entries, seen, problems = [], {}, []
    with open_text(csv_path) as f:
        reader = csv.DictReader(f)
        reader.reader = CsvReader(f, csv_path)  # parse errors name the file and line
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("exam", "label") if c not in columns]
        if missing:
            raise BadInputError(csv_path, f"missing column(s) {missing}; found {columns}, need exam,label[,patient]")
        has_patient = "patient" in columns
        for n, raw in enumerate(reader, start=2):  # row 1 is the header
            try:
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                exam, value = _strip_exam(row["exam"]), row["label"]
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
                label = int(value)
                if label_mode == "binary":
                    label = int(label >= 1)
                image = _find_exam(images, exam)
                if image is None:
                    raise BadInputError(
                        csv_path,
                        f"row {n}: exam {exam!r} has no image: looked for {images / exam}.nii.gz, .nii and a DICOM "
                        "series folder",
                    )
                if image.is_file() and image.stat().st_size == 0:
                    raise BadInputError(image, "empty file (0 bytes)")
                patient = row.get("patient", "") if has_patient else exam
                if not patient:
                    raise BadInputError(csv_path, f"row {n}: empty patient for exam {exam!r}")
                entry = {"image": str(image), "label": label, "patient_id": patient}
                if masks is not None:
                    mask = _find_exam(masks, exam)
                    if mask is None or mask.is_dir():
                        raise BadInputError(csv_path, f"row {n}: exam {exam!r} has no mask {masks / exam}.nii.gz")
                    entry["mask"] = str(mask)
                entries.append(entry)
            except BadInputError as e:
                _bad(e, on_bad_input, problems)
                continue
    _report_skipped(root, problems)
    if not entries:
        raise BadInputError(csv_path, "label CSV has no rows")
    train_fraction = 1 - val_fraction - test_fraction
    out = _split_parts(
        entries, {"training": train_fraction, "validation": val_fraction, "test": test_fraction}, seed
    )
    assert_disjoint_patients(out)
    counts = Counter(e["label"] for e in entries)
    logger.info("knee %s labels %s: %s", label_mode, dict(sorted(counts.items())), {k: len(v) for k, v in out.items()})
    return out


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


def knee_datalist(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    label_mode: str = "four",
    task: str = "acl",
    plane: str = "sagittal",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    on_bad_input: str = "fail",
) -> dict[str, list[dict]]:
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
    if datalist:
        from medplugin.data.datalist import read_datalist

        out = read_datalist(datalist, required_keys=("image", "label"), sections=("training", "validation", "test"))
        if label_mode == "binary":
            out = {k: [{**e, "label": int(int(e["label"]) >= 1)} for e in v] for k, v in out.items()}
        return out
    if detect_knee_layout(dataset_dir) == "mrnet":
        if label_mode != "binary":
            raise ValueError(
                f"{dataset_dir}: the MRNet layout has binary labels ({task} or not); run with --label_mode binary."
            )
        return index_mrnet(dataset_dir, task=task, plane=plane, val_fraction=val_fraction, seed=seed,
                           on_bad_input=on_bad_input)
    return index_knee(dataset_dir, label_mode=label_mode, val_fraction=val_fraction, test_fraction=test_fraction,
                      seed=seed, on_bad_input=on_bad_input)


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def index_knee_inputs(dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = None) -> list[dict]:
    """Exams for batch inference: every NIfTI file, MRNet ``.npy`` file and DICOM series folder under ``dataset_dir``.

    A folder holding DICOM files (``DICM`` at byte 128) is one exam (one series). ``datalist`` (a JSON list or
    datalist, or a text file with one path a line) names the exams instead. Files are not opened beyond the
    DICOM check: unreadable ones produce an error row at inference time. Entries are ``{"image", "path",
    "name"}``; ``name`` is the path relative to ``dataset_dir`` made safe for file names.

    Raises:
        BadInputError: no folder, or nothing to infer on.
    """
    from medplugin.data.datalist import index_images
    from medplugin.utils import safe_name

    if datalist:
        return index_images(dataset_dir, datalist)
    if not dataset_dir or not Path(dataset_dir).is_dir():
        raise BadInputError(dataset_dir, "input folder not found (set --dataset_dir or --datalist)")
    base = Path(dataset_dir)
    items = []
    for p in sorted(base.rglob("*")):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz", ".npy")):
            items.append(p)
        elif p.is_dir() and any(f.is_file() and _is_dicom(f) for f in p.iterdir()):
            items.append(p)
    if not items:
        raise BadInputError(base, "no NIfTI (.nii, .nii.gz), MRNet .npy files or DICOM series folders found")
    entries, seen = [], set()
    for p in items:
        rel = str(p.relative_to(base))
        name = safe_name(_strip_exam(rel[:-4] if rel.lower().endswith(".npy") else rel))
        stem, n = name, 1
        while name in seen:
            name, n = f"{stem}_{n}", n + 1
        seen.add(name)
        entries.append({"image": str(p), "path": str(p), "name": name})
    logger.info("inference on %d exam(s)", len(entries))
    return entries
