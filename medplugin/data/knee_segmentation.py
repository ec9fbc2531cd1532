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

from medplugin.data.datalist import index_knee_volumes, open_text, strip_suffix
from medplugin.data.dataset import failure_message
from medplugin.data.indexer import DatasetIndexer, Scan
from medplugin.errors import BadInputError

__all__ = [
    "KneeSegmentationIndexer",
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
    if path.is_dir():
        return path.name
    stripped = strip_suffix(path.name, _NIFTI)
    return stripped if stripped != path.name else None


def _patients(root: Path) -> dict[str, str]:
    """Exam -> patient from ``labels.csv``'s ``patient`` column, when the file and the column exist."""
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        return {}
    with open_text(csv_path) as f:
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


class KneeSegmentationIndexer(DatasetIndexer):
    """Knee MRI volume/mask pairs -> training/validation/test, split by patient (no stratification).

    Every exam under ``image_dir`` (a NIfTI file or a DICOM series folder) must have a NIfTI mask of the same
    name under ``mask_dir`` with the same shape and affine (checked from the NIfTI headers). The patient of an
    exam is the ``patient`` column of ``labels.csv`` when there is one, else the exam name.

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
    """

    name = "knee segmentation pairs"
    stratify = None

    def __init__(self, root: str | os.PathLike | None, image_dir: str | None = None, mask_dir: str = "masks",
                 val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0, on_bad_input: str = "fail",
                 affine_atol: float = 1e-3) -> None:
        super().__init__(root, val_fraction, test_fraction, seed, on_bad_input)
        self.image_dir, self.mask_dir, self.affine_atol = image_dir, mask_dir, affine_atol

    def scan(self) -> Scan:
        """Pair every exam with its mask and compare their NIfTI headers."""
        root = self.root
        if not root.is_dir():
            raise BadInputError(root, "data set folder not found")
        image_dir = self.image_dir
        if image_dir is None:
            image_dir = next((d for d in KNEESEG_IMAGE_DIRS if (root / d).is_dir()), None)
            if image_dir is None:
                raise BadInputError(root, f"no exam folder: expected one of {KNEESEG_IMAGE_DIRS} with <exam>.nii.gz "
                                          "files")
        images, masks = root / image_dir, root / self.mask_dir
        if not images.is_dir():
            raise BadInputError(images, "exam folder not found")
        if not masks.is_dir():
            raise BadInputError(masks, "mask folder not found (one <exam>.nii.gz mask per exam)")
        patients = _patients(root)
        entries = []
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
                _check_pair(path, mask, self.affine_atol)
            except BadInputError as e:
                self.problems.add(e.path, e.reason)
                continue
            entries.append({"image": str(path), "label": str(mask), "patient_id": patients.get(exam, exam)})
        orphans = sorted({_exam_name(p) for p in masks.iterdir()} - {_exam_name(p) for p in images.iterdir()} - {None})
        if orphans:
            logger.warning("%d mask(s) without an exam are ignored: %s", len(orphans), orphans[:10])
        self.problems.close()
        if not entries:
            raise BadInputError(images, "no usable exam/mask pairs found")
        return Scan(entries)


def index_knee_segmentation(root: str | os.PathLike, image_dir: str | None = None, mask_dir: str = "masks",
                            val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                            on_bad_input: str = "fail", affine_atol: float = 1e-3) -> dict[str, list[dict]]:
    """Index knee MRI volume/mask pairs into ``{"training", "validation", "test"}`` (:class:`KneeSegmentationIndexer`).

    Returns:
        ``{"training", "validation", "test"}`` -> ``{"image": str, "label": str, "patient_id": str}``.

    Raises:
        ValueError: bad fractions or ``on_bad_input``.
        BadInputError: missing folders, no pairs, or bad pairs with ``on_bad_input="fail"`` (each named).
    """
    return KneeSegmentationIndexer(root, image_dir, mask_dir, val_fraction, test_fraction, seed, on_bad_input,
                                   affine_atol).index()


def kneeseg_datalist(dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None = None,
                     val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                     on_bad_input: str = "fail") -> dict[str, list[dict]]:
    """What the segmentation bundle calls: read ``datalist`` (JSON from ``medplugin datalist kneeseg``) when
    given, else index ``dataset_dir`` with :func:`index_knee_segmentation`."""
    return KneeSegmentationIndexer(dataset_dir, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                   on_bad_input=on_bad_input).load(datalist)


# ------------------------------------------------------------------------------------------------ inference
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
            msg = failure_message(entry, e, self.image_key)
            out = {k: v for k, v in entry.items() if isinstance(v, str)}
            from monai.data import MetaTensor

            # a MetaTensor like the good items' (the engine and transforms read .meta of every image)
            out[self.image_key] = MetaTensor(torch.zeros(self.fallback_shape),
                                             meta={"filename_or_obj": entry.get("path", "")})
            out["original_affine"] = torch.eye(4, dtype=torch.float64)
            out["file_axes"] = torch.as_tensor([0, 1, 2])
            out["error"] = msg
        return out
