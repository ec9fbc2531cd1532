"""Readers for knee MRI: Stanford MRNet ``.npy`` exams, and NIfTI files or DICOM series of clinical exams."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from monai.utils import optional_import

from medplugin.errors import BadInputError

__all__ = ["read_mrnet_volume", "read_knee_volume", "load_knee_volume", "NPY_MAGIC"]

logger = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _check_values(path: str, volume: np.ndarray) -> None:
    """Refuse volumes with non-finite values or a single constant value (blank or failed exports)."""
    if volume.size == 0:
        raise BadInputError(path, f"volume is empty (shape {volume.shape})")
    if np.issubdtype(volume.dtype, np.floating):
        bad = ~np.isfinite(volume)
        if bad.any():
            raise BadInputError(
                path, f"volume holds {int(bad.sum())} NaN/inf value(s) of {volume.size}; the export is broken"
            )
    lo, hi = volume.min(), volume.max()
    if lo == hi:
        raise BadInputError(path, f"volume is constant (every voxel is {lo.item()}): a blank or failed export")


def read_mrnet_volume(path: str | os.PathLike, allow_float: bool = False) -> np.ndarray:
    """Read one Stanford MRNet exam volume stored as a NumPy ``.npy`` file.

    MRNet (Bien et al. 2018, "Deep-learning-assisted diagnosis for knee magnetic resonance imaging: Development
    and retrospective validation of MRNet", PLOS Medicine) ships each exam and plane as a ``uint8`` array of
    shape ``(slices, 256, 256)`` (slice-first; about 17-60 slices). The file is read with
    ``np.load(..., allow_pickle=False)``, so a file holding pickled Python objects is refused, never executed.
    The in-plane size is not forced to 256 (the synthetic demo data are smaller).

    Args:
        path: the ``.npy`` file.
        allow_float: also accept floating-point volumes (e.g. re-saved after preprocessing); they are returned
            as ``float32``. By default only MRNet's ``uint8`` is accepted.

    Returns:
        the volume, shape ``(slices, H, W)``, ``uint8`` (or ``float32`` when ``allow_float`` and the file is
        floating point).

    Raises:
        BadInputError: missing, empty (0 bytes), corrupt or truncated file, an ``.npz`` archive, a pickled
            object array, a dtype other than ``uint8`` (or float when allowed), not 3-D, no slices, NaN/inf
            values, or a constant volume.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(path, "MRNet volume file not found" + (" (it is a folder)" if os.path.isdir(path) else ""))
    if os.path.getsize(path) == 0:
        raise BadInputError(path, "MRNet volume file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head[:2] == b"PK":
        raise BadInputError(path, "is an .npz archive; expected a single .npy array per exam and plane")
    if head != NPY_MAGIC:
        raise BadInputError(path, f"not a NumPy .npy file (starts with {head!r}, expected {NPY_MAGIC!r}): corrupt?")
    try:
        volume = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise BadInputError(
                path,
                "refused to load: the array holds pickled Python objects (dtype=object), which could run code; "
                "MRNet volumes are plain uint8 arrays",
            ) from e
        raise BadInputError(path, f"corrupt or truncated .npy file ({e})") from e
    except Exception as e:  # EOFError, OSError, UnpicklingError from truncated or foreign files
        raise BadInputError(path, f"corrupt or truncated .npy file ({type(e).__name__}: {e})") from e
    if volume.dtype.kind not in "uif":
        raise BadInputError(path, f"dtype {volume.dtype} is not numeric; MRNet volumes are uint8")
    if volume.dtype != np.uint8 and not (allow_float and volume.dtype.kind == "f"):
        if volume.dtype.kind == "f":
            _check_values(path, volume)  # a NaN is the more useful message when there is one
        raise BadInputError(
            path,
            f"dtype {volume.dtype}, expected uint8 as in MRNet"
            + (" (pass allow_float=True to accept float volumes)" if volume.dtype.kind == "f" else ""),
        )
    if volume.ndim != 3:
        raise BadInputError(
            path, f"array has {volume.ndim} dimension(s) with shape {volume.shape}; expected (slices, H, W)"
        )
    if min(volume.shape) < 1:
        raise BadInputError(path, f"volume has an empty axis, shape {volume.shape}")
    _check_values(path, volume)
    if not 10 <= volume.shape[0] <= 80:
        logger.debug("%s: %d slices, outside MRNet's usual 17-60", path, volume.shape[0])
    return volume.astype(np.float32) if volume.dtype.kind == "f" else volume


def _sagittal_permutation(affine: np.ndarray) -> tuple[int, int, int]:
    """Voxel axes ``(slice, row, col)`` closest to left-right, superior-inferior and the rest (no flips)."""
    directions = np.abs(affine[:3, :3]) / np.maximum(np.linalg.norm(affine[:3, :3], axis=0), 1e-12)
    slice_axis = int(np.argmax(directions[0]))  # RAS x: left-right, the sagittal slice normal
    rest = [a for a in range(3) if a != slice_axis]
    row_axis = max(rest, key=lambda a: directions[2, a])  # RAS z: superior-inferior runs down the rows
    col_axis = next(a for a in rest if a != row_axis)
    return slice_axis, row_axis, col_axis


def _read_nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    nib, has_nib = optional_import("nibabel")
    if not has_nib:
        raise BadInputError(path, "reading NIfTI needs nibabel (pip install nibabel)")
    try:
        img = nib.load(path)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as e:  # ImageFileError, EOFError, zlib/gzip errors from truncated files
        raise BadInputError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data, affine


def _read_dicom_series(path: str, series_uid: str | None) -> tuple[np.ndarray, np.ndarray]:
    itk, has_itk = optional_import("itk")
    if not has_itk:
        raise BadInputError(path, "reading a DICOM series needs ITK (pip install itk)")
    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    names.SetGlobalWarningDisplay(False)
    names.SetDirectory(path)
    uids = [str(u) for u in names.GetSeriesUIDs()]
    if not uids:
        raise BadInputError(path, "no DICOM series found in the folder (no readable DICOM image files)")
    if series_uid is not None:
        chosen = [u for u in uids if u == series_uid or u.startswith(series_uid)]
        if not chosen:
            raise BadInputError(path, f"series_uid {series_uid!r} not found; the folder holds {uids}")
        uid = chosen[0]
    elif len(uids) > 1:
        raise BadInputError(
            path, f"the folder holds {len(uids)} DICOM series {uids}; keep one series per folder or pass series_uid"
        )
    else:
        uid = uids[0]
    files = [str(f) for f in names.GetFileNames(uid)]  # sorted by slice position by GDCM
    try:
        image_type = itk.Image[itk.F, 3]
        reader = itk.ImageSeriesReader[image_type].New()
        reader.SetImageIO(itk.GDCMImageIO.New())
        reader.SetFileNames(files)
        reader.ForceOrthogonalDirectionOff()
        reader.Update()
        image = reader.GetOutput()
    except Exception as e:
        raise BadInputError(path, f"DICOM series could not be read ({type(e).__name__}: {e})") from e
    data = np.asarray(itk.array_from_image(image), dtype=np.float32).transpose(2, 1, 0)  # ITK (k,j,i) -> (i,j,k)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    direction = np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(spacing)
    lps[:3, 3] = origin
    return data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> RAS as NIfTI


def read_knee_volume(
    path: str | os.PathLike, order: str = "sagittal", series_uid: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a knee MRI exam from a NIfTI file (``.nii``/``.nii.gz``) or a folder holding one DICOM series.

    NIfTI is read with nibabel; DICOM with ITK (GDCM sorts the files by slice position, and the spacing comes
    from the positions and ``PixelSpacing``). The voxels are returned slice-first, like MRNet's ``.npy`` exams
    (Bien et al. 2018, PLOS Medicine), without resampling and without flipping (slice order and spacing as in
    the file): with ``order="sagittal"`` the voxel axis closest to left-right becomes the slice axis, the one
    closest to superior-inferior the rows and the remaining (anterior-posterior) one the columns, so a sagittal
    acquisition keeps its stored slice order and an axial or coronal one is presented as sagittal slices; with
    ``order="file"`` the array is ``(k, j, i)``: the third stored axis (DICOM's slice axis) first.

    Args:
        path: a NIfTI file or a DICOM series folder.
        order: ``"sagittal"`` or ``"file"``, as above.
        series_uid: the series to read when a DICOM folder holds more than one (a prefix is enough).

    Returns:
        ``(volume, affine)``: ``volume`` is ``float32`` of shape ``(slices, rows, cols)`` and ``affine`` the
        4x4 matrix that maps ``(slice, row, col, 1)`` voxel indices to RAS millimetres (so the voxel spacing is
        the norm of its first three columns).

    Raises:
        ValueError: ``order`` is not one of the two values.
        BadInputError: missing or empty path, an unknown file type, unreadable or corrupt data, several DICOM
            series without ``series_uid``, not 3-D, fewer than 2 slices, NaN/inf values or a constant volume.
    """
    volume, affine, _, _ = load_knee_volume(path, order, series_uid)
    return volume, affine


def load_knee_volume(
    path: str | os.PathLike, order: str = "sagittal", series_uid: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[int, int, int]]:
    """:func:`read_knee_volume`, also returning where the volume's axes come from in the file.

    Returns:
        ``(volume, affine, file_affine, file_axes)``: ``volume`` and ``affine`` as :func:`read_knee_volume`;
        ``file_affine`` the NIfTI file's own affine (``None`` for a DICOM series) and ``file_axes`` the stored
        voxel axis of each axis of ``volume`` (``volume`` is the stored array transposed by ``file_axes``).
    """
    if order not in ("sagittal", "file"):
        raise ValueError(f"order must be 'sagittal' or 'file', got {order!r}.")
    path = os.fspath(path)
    file_affine = None  # a NIfTI file's own affine (its voxel grid, for writing results on it)
    if os.path.isdir(path):
        data, affine = _read_dicom_series(path, series_uid)
    elif not os.path.exists(path):
        raise BadInputError(path, "knee MRI exam not found (expected a .nii/.nii.gz file or a DICOM series folder)")
    elif os.path.getsize(path) == 0:
        raise BadInputError(path, "file is empty (0 bytes)")
    elif Path(path).name.lower().endswith(_NIFTI_SUFFIXES):
        data, affine = _read_nifti(path)
        file_affine = affine
    else:
        raise BadInputError(
            path, "unknown file type: expected a NIfTI file (.nii, .nii.gz) or a folder holding one DICOM series"
        )
    if data.ndim != 3:
        raise BadInputError(path, f"image has {data.ndim} dimension(s) with shape {data.shape}; expected a 3-D volume")
    if not np.isfinite(affine).all():
        raise BadInputError(path, "the voxel-to-world matrix (affine) holds NaN or infinite values: damaged header")
    perm = _sagittal_permutation(affine) if order == "sagittal" else (2, 1, 0)
    volume = np.ascontiguousarray(data.transpose(perm), dtype=np.float32)
    if volume.shape[0] < 2:
        raise BadInputError(path, f"only {volume.shape[0]} slice (shape {volume.shape}); expected a 3-D series")
    _check_values(path, volume)
    new_affine = np.eye(4)
    new_affine[:3, :3] = affine[:3, list(perm)]
    new_affine[:3, 3] = affine[:3, 3]
    logger.debug("%s: %s volume, spacing %s mm", path, volume.shape, np.linalg.norm(new_affine[:3, :3], axis=0))
    return volume, new_affine, file_affine, perm
