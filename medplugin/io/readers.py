"""MONAI ``ImageReader``s for the images MONAI's own readers read differently from what medplugin needs.

Use them with MONAI's loaders, ``LoadImage(reader=Image2dReader())`` or ``LoadImaged(keys, reader=...)``, or
through :class:`medplugin.transforms.LoadImage2d` / :class:`medplugin.transforms.LoadKneeVolume`.

- :class:`Image2dReader`: radiographs and photographs (PNG, JPEG, BMP, TIFF, DICOM, 2D NIfTI) rows first, as
  displayed, on a 0..255 scale, DICOM with its Modality LUT, VOI LUT or window and MONOCHROME1 inverted
  (:func:`medplugin.io.image2d.read_image_2d`). MONAI's ``PILReader`` puts columns first and keeps 16-bit
  values; its ``PydicomReader`` and ``ITKReader`` apply no VOI LUT and leave MONOCHROME1 dark-is-high.
- :class:`MRNetReader`: Stanford MRNet ``.npy`` exams, loaded without pickle and checked (dtype, shape,
  constant or non-finite volumes); MONAI's ``NumpyReader`` would also take ``.npz`` archives and check nothing.
- :class:`KneeVolumeReader`: a knee MRI exam (NIfTI file, DICOM series folder or MRNet ``.npy``) slice-first
  in sagittal order with its affine (:func:`medplugin.io.mrnet.load_knee_volume`). The NIfTI and DICOM parts
  keep their own nibabel and ITK code although MONAI's ``NibabelReader`` and ``ITKReader`` give the same arrays
  and affines on nibabel's test files and on a one-series folder: ``NibabelReader`` replaces an sform whose
  scales disagree with *pixdim* by the qform (results written back would then not overlay the input in viewers
  that use the sform), and ``ITKReader`` reads the first of several series in a folder with only a warning,
  splits series by *Series Date* too, and forces an orthogonal direction matrix.

Every check and all decoding happen in ``get_data``; ``read`` only records the names. So with
``LoadImage(reader=...)`` a bad file raises :class:`medplugin.errors.BadInputError` naming it and the reason,
instead of MONAI's loader trying its other readers on it. The meta dicts hold MONAI's keys (``affine``,
``original_affine``, ``spatial_shape``, ``original_channel_dim``, ``filename_or_obj``) and never patient data.
Several files given together are stacked as channels (same spatial shape and affine required).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import ImageReader
from monai.utils import SpaceKeys, ensure_tuple

from medplugin.errors import BadInputError
from medplugin.io.image2d import looks_like_image, read_image_2d
from medplugin.io.mrnet import load_knee_volume, read_mrnet_volume

__all__ = ["Image2dReader", "MRNetReader", "KneeVolumeReader"]

_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy")


def _names(data) -> tuple:
    return tuple(ensure_tuple(data))


def _stack(items: list[tuple[np.ndarray, dict]], channel_first: bool) -> tuple[np.ndarray, dict]:
    """One file's ``(array, meta)``, or several stacked as channels with the first file's meta."""
    if len(items) == 1:
        return items[0]
    meta = items[0][1]
    shape = tuple(int(s) for s in meta["spatial_shape"])
    for _, m in items[1:]:
        other = tuple(int(s) for s in m["spatial_shape"])
        if other != shape:
            reason = f"spatial shape {other} differs from its {shape}"
        elif not np.allclose(np.asarray(m["affine"], np.float64), np.asarray(meta["affine"], np.float64)):
            reason = "affine differs from its affine"
        else:
            continue
        raise BadInputError(
            m["filename_or_obj"],
            f"cannot stack with {meta['filename_or_obj']}: {reason} (files read together must share one grid)",
        )
    arrays = [a for a, _ in items]
    out = np.concatenate(arrays, axis=0) if channel_first else np.stack(arrays, axis=0)
    return out, {**meta, "original_channel_dim": 0}


class Image2dReader(ImageReader):
    """Read 2D images rows first as ``(C, H, W)`` float32 on a 0..255 scale, as :func:`read_image_2d` does.

    JPEG, PNG, BMP, TIFF (Pillow, fully decoded: a truncated file is an error), DICOM radiographs (Modality LUT,
    VOI LUT or first window, else min..max; MONOCHROME1 inverted so that higher is brighter; compressed transfer
    syntaxes through pydicom's plugins) and 2D NIfTI. The meta dict holds ``filename_or_obj``, ``original_shape``
    ``(H, W)``, ``format``, DICOM's non-identifying fields (see :func:`medplugin.io.dicom.read_dicom_image`) and
    MONAI's ``affine`` and ``original_affine`` (identity), ``spatial_shape`` ``(H, W)`` and
    ``original_channel_dim`` 0.

    Args:
        channels: 1 (grayscale; colour converted with BT.601 luma), 3 (RGB; grayscale repeated) or ``None``
            (as stored).

    Raises:
        ValueError: ``channels`` is not 1, 3 or ``None``.
    """

    def __init__(self, channels: int | None = 1) -> None:
        super().__init__()
        if channels not in (1, 3, None):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}.")
        self.channels = channels

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        """Whether every file is a 2D image this reader can try: a known suffix, or DICOM by its marker."""
        return all(looks_like_image(f) for f in _names(filename))

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs) -> tuple:
        """Record the file names; :meth:`get_data` reads them."""
        return _names(data)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Decode the file(s) recorded by :meth:`read`: ``(array (C, H, W), meta)``.

        Raises:
            BadInputError: naming the file, when it is missing, empty, truncated, corrupt, unsupported or of the
                wrong shape, or when files read together differ in size.
        """
        items = []
        for name in _names(img):
            arr, meta = read_image_2d(name, channels=self.channels)
            meta.update(
                affine=np.eye(4),
                original_affine=np.eye(4),
                spatial_shape=np.asarray(arr.shape[1:]),
                original_channel_dim=0,
                space=SpaceKeys.RAS,
            )
            # no None values (e.g. a radiograph without pixel spacing): a batch of such images must collate
            items.append((arr, {k: v for k, v in meta.items() if v is not None}))
        return _stack(items, channel_first=True)


def _spacing_affine(spacing: Sequence[float] | float) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive numbers (mm), got {sp.tolist()!r}.")
    return np.diag([*sp, 1.0])


class MRNetReader(ImageReader):
    """Read Stanford MRNet ``.npy`` exams (Bien et al. 2018, PLOS Medicine) with :func:`read_mrnet_volume`.

    The file is loaded with ``allow_pickle=False`` and refused unless it is a 3-D ``uint8`` array (or a float
    one with ``allow_float``) with finite, non-constant values. MRNet publishes no voxel size: ``spacing`` gives
    the diagonal ``affine``. The array is ``(slices, H, W)`` as stored (``original_channel_dim`` NaN, MONAI's
    "no channel"), or ``(1, slices, H, W)`` with ``channel_first``.

    Args:
        spacing: voxel size (slice, row, col) in mm, or one number for all three.
        allow_float: also accept floating-point volumes (returned as ``float32``).
        channel_first: add a leading channel axis.

    Raises:
        ValueError: ``spacing`` is not three positive numbers.
    """

    def __init__(
        self, spacing: Sequence[float] | float = (1.0, 1.0, 1.0), allow_float: bool = False, channel_first: bool = False
    ) -> None:
        super().__init__()
        self.affine = _spacing_affine(spacing)
        self.allow_float = allow_float
        self.channel_first = channel_first

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        """Whether every file name ends in ``.npy``."""
        return all(os.fspath(f).lower().endswith(".npy") for f in _names(filename))

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs) -> tuple:
        """Record the file names; :meth:`get_data` reads them."""
        return _names(data)

    def read_one(self, name: os.PathLike | str) -> tuple[np.ndarray, dict]:
        """One exam: ``(volume, meta)`` without the channel axis."""
        vol = read_mrnet_volume(name, allow_float=self.allow_float)
        meta = {
            "filename_or_obj": os.fspath(name),
            "affine": self.affine.copy(),
            "original_affine": self.affine.copy(),
            "spatial_shape": np.asarray(vol.shape),
            "original_channel_dim": float("nan"),
            "space": SpaceKeys.RAS,
        }
        return vol, meta

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Load the exam(s) recorded by :meth:`read`.

        Raises:
            BadInputError: naming the file (see :func:`read_mrnet_volume`), or when exams read together differ
                in shape.
        """
        items = []
        for name in _names(img):
            vol, meta = self.read_one(name)
            if self.channel_first:
                vol, meta["original_channel_dim"] = vol[None], 0
            items.append((vol, meta))
        return _stack(items, channel_first=self.channel_first)


class KneeVolumeReader(ImageReader):
    """Read a knee MRI exam slice-first with its affine: a NIfTI file, a DICOM series folder or an MRNet ``.npy``.

    NIfTI and DICOM go through :func:`medplugin.io.mrnet.load_knee_volume` (slices first in sagittal order,
    without resampling or flipping), ``.npy`` through :class:`MRNetReader` (float volumes accepted) with
    ``npy_spacing``. The volume is ``float32`` ``(1, slices, H, W)`` (``channel_first``) or ``(slices, H, W)``.
    The meta dict holds ``filename_or_obj``, ``affine`` (voxel ``(slice, row, col)`` to RAS mm),
    ``original_affine`` (the input file's own grid: a NIfTI file's affine, else ``affine``), ``file_axes``
    (volume axis ``a`` is file axis ``file_axes[a]``; ``[0, 1, 2]`` unless NIfTI), ``spatial_shape`` and
    ``original_channel_dim`` (0, or NaN without the channel). ``original_affine`` and ``file_axes`` are torch
    tensors, as :class:`~medplugin.transforms.LoadKneeVolume` has always given them.

    Args:
        order: ``"sagittal"`` or ``"file"`` (see :func:`medplugin.io.mrnet.read_knee_volume`).
        npy_spacing: voxel size (slice, row, col) in mm assumed for ``.npy`` exams.
        channel_first: add a leading channel axis.
        series_uid: the series to read when a DICOM folder holds more than one (a prefix is enough).

    Raises:
        ValueError: a bad ``order`` or ``npy_spacing``.
    """

    def __init__(
        self,
        order: str = "sagittal",
        npy_spacing: Sequence[float] | float = (1.0, 1.0, 1.0),
        channel_first: bool = True,
        series_uid: str | None = None,
    ) -> None:
        super().__init__()
        if order not in ("sagittal", "file"):
            raise ValueError(f"order must be 'sagittal' or 'file', got {order!r}.")
        self.order = order
        self.npy_reader = MRNetReader(spacing=npy_spacing, allow_float=True)
        self.channel_first = channel_first
        self.series_uid = series_uid

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        """Whether every name is a folder (a DICOM series) or ends in ``.nii``, ``.nii.gz`` or ``.npy``."""
        return all(os.path.isdir(f) or os.fspath(f).lower().endswith(_VOLUME_SUFFIXES) for f in _names(filename))

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs) -> tuple:
        """Record the names; :meth:`get_data` reads them."""
        return _names(data)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Load the exam(s) recorded by :meth:`read`.

        Raises:
            BadInputError: naming the path (see :func:`medplugin.io.mrnet.read_knee_volume` and
                :func:`medplugin.io.mrnet.read_mrnet_volume`), or when exams read together differ in grid.
        """
        items = []
        for name in _names(img):
            path = os.fspath(name)
            if path.lower().endswith(".npy"):
                vol, npy_meta = self.npy_reader.read_one(path)
                vol, affine, file_affine, file_axes = vol.astype(np.float32), npy_meta["affine"], None, [0, 1, 2]
            else:
                vol, affine, file_affine, file_axes = load_knee_volume(path, self.order, self.series_uid)
                if file_affine is None:  # a DICOM series: no file grid other than the loaded one
                    file_axes = [0, 1, 2]
            meta = {
                "filename_or_obj": path,
                "affine": affine,
                "original_affine": torch.as_tensor(affine if file_affine is None else file_affine, dtype=torch.float64),
                "file_axes": torch.as_tensor(list(file_axes)),
                "spatial_shape": np.asarray(vol.shape),
                "original_channel_dim": 0 if self.channel_first else float("nan"),
                "space": SpaceKeys.RAS,
            }
            items.append((vol[None] if self.channel_first else vol, meta))
        return _stack(items, channel_first=self.channel_first)
