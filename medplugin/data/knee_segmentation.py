"""Knee MRI ACL-region segmentation datalists: volume/mask pairs, split by patient.

Layout (what :func:`medplugin.data.synthetic.knee.make_knee_nifti_demo` writes)::

    <root>/exams/<exam>.nii.gz     (or images/; also .nii, or a folder holding one DICOM series)
    <root>/masks/<exam>.nii.gz     the ACL region (voxels > 0), same shape and affine as the exam
    <root>/labels.csv              optional: columns exam[,label][,patient]; ``patient`` groups exams

Entries are ``{"image": str, "label": str (the mask), "patient_id": str}``: ``label`` is the mask file, as in
MONAI's segmentation datalists.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from medplugin.data.splits import assert_disjoint_patients, patient_level_split
from medplugin.errors import BadInputError

__all__ = [
    "index_knee_segmentation",
    "index_knee_volumes",
    "kneeseg_datalist",
    "TolerantVolumeDataset",
    "KNEESEG_IMAGE_DIRS",
    "KNEESEG_CLASSES",
]

logger = logging.getLogger(__name__)

KNEESEG_IMAGE_DIRS = ("exams", "images")
KNEESEG_CLASSES = ("background", "acl")
_NIFTI = (".nii.gz", ".nii")


def _exam_name(path: Path) -> str | None:
    name = path.name
    if path.is_dir():
        return name
    for suffix in _NIFTI:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _patients(root: Path) -> dict[str, str]:
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        return {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "exam" not in cols or "patient" not in cols:
            return {}
        out = {}
        for raw in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            exam = row["exam"]
            for suffix in _NIFTI:
                if exam.lower().endswith(suffix):
                    exam = exam[: -len(suffix)]
            if exam and row["patient"]:
                out[exam] = row["patient"]
        return out


def _nifti_geometry(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(v) for v in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as e:  # ImageFileError, EOFError, gzip errors
        raise BadInputError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from e
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise BadInputError(path, f"shape {shape} is not a 3-D volume")
    return shape, affine


def _check_pair(image: Path, mask: Path, atol: float) -> None:
    """Header-level check of a NIfTI image/mask pair (DICOM series are checked when loaded)."""
    if mask.stat().st_size == 0:
        raise BadInputError(mask, "mask file is empty (0 bytes)")
    m_shape, m_affine = _nifti_geometry(mask)
    if image.is_dir():
        return
    if image.stat().st_size == 0:
        raise BadInputError(image, "image file is empty (0 bytes)")
    i_shape, i_affine = _nifti_geometry(image)
    if i_shape != m_shape:
        raise BadInputError(mask, f"mask shape {m_shape} differs from its image's {i_shape} ({image.name})")
    if not np.allclose(i_affine, m_affine, atol=atol):
        diff = float(np.abs(i_affine - m_affine).max())
        raise BadInputError(
            mask, f"mask affine differs from its image's ({image.name}) by up to {diff:.4g} mm: not the same grid"
        )


def index_knee_segmentation(
    root: str | os.PathLike,
    image_dir: str | None = None,
    mask_dir: str = "masks",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    on_bad_input: str = "fail",
    affine_atol: float = 1e-3,
) -> dict[str, list[dict]]:
    """Index knee MRI volume/mask pairs into ``{"training", "validation", "test"}``, split by patient.

    Every exam under ``image_dir`` (a NIfTI file or a DICOM series folder) must have a NIfTI mask of the same
    name under ``mask_dir`` with the same shape and affine (checked from the NIfTI headers). The patient of an
    exam is the ``patient`` column of ``labels.csv`` when there is one, else the exam name; no patient is in
    two parts.

    Args:
        root: the data set folder.
        image_dir: the exams folder inside ``root``; default the first of ``exams/``, ``images/`` that exists.
        mask_dir: the masks folder inside ``root``.
        val_fraction: fraction of patients for validation, in [0, 1).
        test_fraction: fraction of patients for test, in [0, 1); the two sum to less than 1.
        seed: seed of the split.
        on_bad_input: ``"fail"`` raises one error listing every bad pair (missing mask, unreadable file,
            shape or affine mismatch); ``"skip"`` logs them and leaves them out.
        affine_atol: tolerance (mm) when comparing image and mask affines.

    Returns:
        ``{"training", "validation", "test"}`` -> ``{"image": str, "label": str, "patient_id": str}``.

    Raises:
        ValueError: bad fractions or ``on_bad_input``.
        BadInputError: missing folders, no pairs, or bad pairs with ``on_bad_input="fail"`` (each named).
    """
    if on_bad_input not in ("fail", "skip"):
        raise ValueError(f"on_bad_input must be 'fail' or 'skip', got {on_bad_input!r}.")
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= v < 1:
            raise ValueError(f"{name} must be in [0, 1), got {v!r}.")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}.")
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(root, "data set folder not found")
    if image_dir is None:
        image_dir = next((d for d in KNEESEG_IMAGE_DIRS if (root / d).is_dir()), None)
        if image_dir is None:
            raise BadInputError(root, f"no exam folder: expected one of {KNEESEG_IMAGE_DIRS} with <exam>.nii.gz files")
    images, masks = root / image_dir, root / mask_dir
    if not images.is_dir():
        raise BadInputError(images, "exam folder not found")
    if not masks.is_dir():
        raise BadInputError(masks, "mask folder not found (one <exam>.nii.gz mask per exam)")
    patients = _patients(root)
    entries, problems = [], []
    for path in sorted(images.iterdir()):
        exam = _exam_name(path)
        if exam is None:
            if not path.name.startswith("."):
                logger.debug("ignoring %s (not a NIfTI file or a DICOM series folder)", path)
            continue
        mask = next((masks / f"{exam}{s}" for s in _NIFTI if (masks / f"{exam}{s}").is_file()), None)
        try:
            if mask is None:
                raise BadInputError(path, f"no mask {masks / exam}.nii.gz for this exam")
            _check_pair(path, mask, affine_atol)
        except BadInputError as e:
            problems.append((e.path, e.reason))
            continue
        entries.append({"image": str(path), "label": str(mask), "patient_id": patients.get(exam, exam)})
    orphans = sorted({_exam_name(p) for p in masks.iterdir()} - {_exam_name(p) for p in images.iterdir()} - {None})
    if orphans:
        logger.warning("%d mask(s) without an exam are ignored: %s", len(orphans), orphans[:10])
    if problems:
        listing = "\n".join(f"  {p}: {r}" for p, r in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        if on_bad_input == "fail":
            raise BadInputError(root, f"{len(problems)} bad item(s) (on_bad_input='fail'):\n{listing}{more}")
        logger.warning("skipping %d bad item(s) of %s:\n%s%s", len(problems), root, listing, more)
    if not entries:
        raise BadInputError(images, "no usable exam/mask pairs found")
    fractions = {"training": 1 - val_fraction - test_fraction, "validation": val_fraction, "test": test_fraction}
    used = {k: v for k, v in fractions.items() if v > 0}
    parts = patient_level_split(entries, used, seed=seed, stratify_key=None)
    out = {k: parts.get(k, []) for k in fractions}
    assert_disjoint_patients(out)
    logger.info("knee segmentation pairs: %s", {k: len(v) for k, v in out.items()})
    return out


def kneeseg_datalist(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    on_bad_input: str = "fail",
) -> dict[str, list[dict]]:
    """What the segmentation bundle calls: read ``datalist`` (JSON from ``medplugin datalist kneeseg``) when
    given, else index ``dataset_dir`` with :func:`index_knee_segmentation`."""
    if datalist:
        from medplugin.data.datalist import read_datalist

        return read_datalist(datalist, required_keys=("image", "label"), sections=("training", "validation", "test"))
    return index_knee_segmentation(
        dataset_dir, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, on_bad_input=on_bad_input
    )


# ------------------------------------------------------------------------------------------------ inference
def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        return head[128:132] == b"DICM"
    except OSError:
        return False


def index_knee_volumes(dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = None) -> list[dict]:
    """Entries for batch inference: every knee exam under ``dataset_dir`` (recursively) or those ``datalist`` names.

    An exam is a NIfTI file (``.nii``, ``.nii.gz``), an MRNet ``.npy`` file, or a folder directly holding DICOM
    files (one series). Entries are ``{"image": path, "path": path, "name": safe relative name}``; nothing is
    opened here, so a bad file becomes an error row at inference time while the others are processed.

    Args:
        dataset_dir: the folder to search.
        datalist: optional JSON list / datalist or text file naming the exams (relative to ``dataset_dir``).

    Raises:
        BadInputError: the folder is missing or holds no exam.
    """
    from medplugin.data.datalist import _read_image_list
    from medplugin.utils import safe_name

    if datalist:
        base = Path(dataset_dir) if dataset_dir else Path(datalist).parent
        items = [Path(p) if Path(p).is_absolute() else base / p for p in _read_image_list(Path(datalist))]
    else:
        if not dataset_dir or not Path(dataset_dir).is_dir():
            raise BadInputError(dataset_dir, "input folder not found (set --dataset_dir or --datalist)")
        base = Path(dataset_dir)
        items = []
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            here = Path(folder)
            files = sorted(f for f in files if not f.startswith("."))
            volumes = [here / f for f in files if f.lower().endswith((".nii", ".nii.gz", ".npy"))]
            items += volumes
            others = [here / f for f in files if not f.lower().endswith((".nii", ".nii.gz", ".npy"))]
            if here != base and others and any(_is_dicom_file(p) for p in others[:20]):
                items.append(here)
        items.sort()
        if not items:
            raise BadInputError(base, "no NIfTI (.nii, .nii.gz), MRNet .npy or DICOM series folder found (searched recursively)")
    entries, seen = [], set()
    for full in items:
        try:
            rel = Path(full).relative_to(base)
        except ValueError:
            rel = Path(Path(full).name)
        stem = str(rel)
        for suffix in (".nii.gz", ".nii", ".npy"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        name, n = safe_name(stem), 1
        while name in seen:
            name = f"{safe_name(stem)}_{n}"
            n += 1
        seen.add(name)
        entries.append({"image": str(full), "path": str(full), "name": name})
    return entries


class TolerantVolumeDataset:
    """A dataset of 3D exams for batch inference whose items never raise (batch size 1, any volume size).

    Like :class:`medplugin.data.TolerantDataset`, a failing item becomes ``{"image": zeros(fallback_shape),
    "error": message, "path", "name"}``; good items keep their ``MetaTensor`` image and also carry the plain
    tensors ``original_affine`` and ``file_axes`` (from :class:`~medplugin.transforms.LoadKneeVolume`) so that
    writers can put masks on the input's own grid. Use it with ``batch_size=1``: volumes differ in size.

    Args:
        data: entries from :func:`index_knee_volumes`.
        transform: the preprocessing (loads ``image``).
        fallback_shape: placeholder image shape, e.g. ``[1, 16, 32, 32]``.
        image_key: key of the image.
    """

    def __init__(self, data, transform, fallback_shape, image_key: str = "image") -> None:
        from monai.data import Dataset

        self._ds = Dataset(data=data, transform=transform)
        self.data = data
        self.fallback_shape = tuple(int(s) for s in fallback_shape)
        self.image_key = image_key

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict:
        import torch

        entry = self.data[index]
        try:
            out = dict(self._ds[index])
            img = out[self.image_key]
            meta = getattr(img, "meta", {})
            out["original_affine"] = torch.as_tensor(meta.get("original_affine", torch.eye(4)), dtype=torch.float64)
            out["file_axes"] = torch.as_tensor(meta.get("file_axes", [0, 1, 2]))
            out["error"] = ""
        except Exception as e:  # every failure becomes a per-item error row
            cause = e
            while cause.__cause__ is not None and not isinstance(cause, BadInputError):
                cause = cause.__cause__
            msg = str(cause) if isinstance(cause, BadInputError) else f"{entry.get('path')}: {type(e).__name__}: {e}"
            logger.warning("skipping input: %s", msg.splitlines()[0])
            out = {k: v for k, v in entry.items() if isinstance(v, str)}
            from monai.data import MetaTensor

            # a MetaTensor like the good items' (the engine and transforms read .meta of every image)
            out[self.image_key] = MetaTensor(torch.zeros(self.fallback_shape), meta={"filename_or_obj": entry.get("path", "")})
            out["original_affine"] = torch.eye(4, dtype=torch.float64)
            out["file_axes"] = torch.as_tensor([0, 1, 2])
            out["error"] = msg.splitlines()[0]
        return out
