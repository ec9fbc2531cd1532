"""Reading 2D images (JPEG, PNG, BMP, TIFF, DICOM) into channel-first float arrays with clear errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from medplugin.errors import BadInputError
from medplugin.io.dicom import has_dicom_magic

__all__ = ["IMAGE_SUFFIXES", "DICOM_SUFFIXES", "NIFTI_SUFFIXES", "read_image_2d", "looks_like_image"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")  # 2D NIfTI radiographs (a lone "x.gz" is not one)


def _is_nifti(path: str) -> bool:
    return path.lower().endswith(NIFTI_SUFFIXES)


def looks_like_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file this module can try to read: a known image suffix, or DICOM by suffix or magic."""
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES or _is_nifti(path):
        return True
    return suffix == "" and has_dicom_magic(path)


def _to_channels(arr: np.ndarray, channels: int | None, path: str) -> np.ndarray:
    """(H, W) or (H, W, C) -> (C, H, W) with ``channels`` channels (None keeps what the file has)."""
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        if arr.shape[-1] == 4:  # RGBA: drop alpha
            arr = arr[..., :3]
        if arr.shape[-1] not in (1, 3):
            raise BadInputError(path, f"unexpected image shape {arr.shape}: expected 1, 3 or 4 channels")
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise BadInputError(path, f"expected a 2D image, got an array of shape {arr.shape}")
    if channels is None or arr.shape[0] == channels:
        return arr
    if channels == 1:  # ITU-R BT.601 luma, as PIL's "L" mode
        return (0.299 * arr[0:1] + 0.587 * arr[1:2] + 0.114 * arr[2:3]).astype(np.float32)
    if channels == 3 and arr.shape[0] == 1:
        return np.repeat(arr, 3, axis=0)
    raise ValueError(f"channels must be 1, 3 or None, got {channels!r}.")


def read_image_2d(path: str | os.PathLike, channels: int | None = 1) -> tuple[np.ndarray, dict]:
    """Read a 2D image as a float32 ``(C, H, W)`` array on a 0..255 scale, rows first (display orientation).

    JPEG, PNG, BMP and TIFF go through Pillow (fully decoded, so a truncated file is an error, not a grey
    stripe); DICOM through :func:`medplugin.io.dicom.read_dicom_image` (modality and VOI LUT applied,
    MONOCHROME1 inverted). 16-bit PNGs are scaled to 0..255.

    Args:
        path: the image file.
        channels: 1 (grayscale; colour is converted with BT.601 luma), 3 (RGB; grayscale repeated), or
            ``None`` to keep the file's own channels. An alpha channel is dropped.

    Returns:
        ``(array, meta)`` where meta holds ``filename_or_obj``, ``original_shape`` ``(H, W)`` and ``format``.

    Raises:
        BadInputError: a missing, empty, truncated, corrupt or unsupported file, or one of the wrong shape.
    """
    if channels not in (1, 3, None):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES or (suffix not in IMAGE_SUFFIXES and has_dicom_magic(path)):
        from medplugin.io.dicom import read_dicom_image

        arr, dmeta = read_dicom_image(path)
        fmt = "DICOM"
    elif _is_nifti(path):
        arr, dmeta = _read_nifti_2d(path)
        fmt = "NIfTI"
    else:
        arr, fmt = _read_pil(path)
        dmeta = {}
    arr = _to_channels(np.asarray(arr, dtype=np.float32), channels, path)
    if not np.isfinite(arr).all():
        raise BadInputError(path, "image holds NaN or infinite values")
    meta = {"filename_or_obj": path, "original_shape": tuple(arr.shape[1:]), "format": fmt, **dmeta}
    return arr, meta


def _read_pil(path: str) -> tuple[np.ndarray, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format or "unknown"
                im.load()  # full decode: truncated files raise here
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float32)
                    hi = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                    return arr * (255.0 / hi), fmt
                if im.mode not in ("L", "RGB", "RGBA"):
                    im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                return np.asarray(im), fmt
    except UnidentifiedImageError as e:
        raise BadInputError(path, "not a readable image (unknown or corrupt format)") from e
    except OSError as e:  # truncated / broken data
        raise BadInputError(path, f"corrupt or truncated image ({e})") from e
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadInputError(path, f"image too large to decode safely ({e})") from e
    except (SyntaxError, ValueError) as e:
        raise BadInputError(path, f"corrupt image ({e})") from e


def _read_nifti_2d(path: str) -> tuple[np.ndarray, dict]:
    """A 2D NIfTI image (singleton axes dropped) as ``(rows, columns)``, min..max scaled to 0..255.

    NIfTI's first axis is x (columns) and its second y (rows), so the array is transposed to rows first; the
    voxel sizes are kept as ``pixel_spacing`` ``[row, column]`` mm.
    """
    import nibabel as nib

    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise BadInputError(path, f"corrupt or truncated NIfTI file ({type(e).__name__}: {e})") from e
    keep = [i for i, s in enumerate(data.shape) if s != 1]
    if len(keep) != 2 or keep[0] > 1 or keep[1] > 1:
        raise BadInputError(path, f"expected a 2D NIfTI image (x, y), got shape {data.shape}")
    data = data.reshape([data.shape[i] for i in keep]).T
    if data.size == 0:
        raise BadInputError(path, f"image is empty (shape {data.shape})")
    if not np.isfinite(data).all():
        raise BadInputError(path, "image holds NaN or infinite values")
    lo, hi = float(data.min()), float(data.max())
    out = (data - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(data)
    zooms = [float(z) for z in img.header.get_zooms()[:2]]
    meta = {"pixel_spacing": [zooms[1], zooms[0]]}
    return out.astype(np.float32), meta
