"""Loading knee MRI exams as ``MetaTensor`` volumes (NIfTI file, DICOM series folder or MRNet ``.npy``).

Kept apart from the transforms grouped by operation: the loaders move to :mod:`medplugin.transforms.io` (as
MONAI ``ImageReader`` s) with the rest of loading.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends

from medplugin.transforms.utils import voxel_spacing

__all__ = ["LoadKneeVolume"]


def _nifti_file_axes(path: str, affine: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The NIfTI file's affine and, per axis of ``read_knee_volume``'s array, the file axis it came from."""
    import nibabel as nib

    file_affine = np.asarray(nib.load(path).affine, dtype=np.float64)
    axes = []
    for a in range(3):
        match = [b for b in range(3) if b not in axes and np.allclose(affine[:3, a], file_affine[:3, b], atol=1e-5)]
        axes.append(match[0] if match else a)
    if sorted(axes) != [0, 1, 2]:
        axes = [0, 1, 2]
    return file_affine, axes


# ----------------------------------------------------------------------------------------------- loading
class LoadKneeVolume(Transform):
    """Load a knee MRI exam (NIfTI file, DICOM series folder or MRNet ``.npy``) as a ``MetaTensor``.

    NIfTI and DICOM are read with :func:`medplugin.io.mrnet.read_knee_volume` (slices first, sagittal order,
    affine kept); MRNet ``.npy`` files with :func:`medplugin.io.mrnet.read_mrnet_volume` and ``npy_spacing`` as
    a diagonal affine (MRNet publishes no spacing). The meta dict keeps ``affine`` (voxel ``(slice, row, col)``
    to RAS mm), ``original_affine`` (the same: the affine the written masks get), ``filename_or_obj`` and
    ``spatial_shape``.

    Args:
        channel_first: add a leading channel: ``(1, slices, H, W)``; else ``(slices, H, W)``.
        order: ``"sagittal"`` or ``"file"`` (see ``read_knee_volume``).
        npy_spacing: voxel size (slice, row, col) in mm assumed for ``.npy`` exams.
        dtype: output dtype.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        channel_first: bool = True,
        order: str = "sagittal",
        npy_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if order not in ("sagittal", "file"):
            raise ValueError(f"order must be 'sagittal' or 'file', got {order!r}.")
        self.channel_first = channel_first
        self.order = order
        self.npy_affine = np.diag([*voxel_spacing(np.zeros(0), npy_spacing), 1.0])
        self.dtype = dtype

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        """Read ``filename``; every failure is a :class:`~medplugin.errors.BadInputError` naming it."""
        from medplugin.io.mrnet import read_knee_volume, read_mrnet_volume

        path = os.fspath(filename)
        file_affine, file_axes = None, [0, 1, 2]
        if path.lower().endswith(".npy"):
            vol, affine = read_mrnet_volume(path, allow_float=True).astype(np.float32), self.npy_affine.copy()
        else:
            vol, affine = read_knee_volume(path, order=self.order)
            if path.lower().endswith((".nii", ".nii.gz")):
                file_affine, file_axes = _nifti_file_axes(path, affine)
        t = torch.as_tensor(np.ascontiguousarray(vol), dtype=self.dtype)
        if self.channel_first:
            t = t[None]
        affine_t = torch.as_tensor(affine, dtype=torch.float64)
        meta = {
            "filename_or_obj": path,
            # the file's own voxel grid: array axis a of the volume is file axis file_axes[a]
            "original_affine": torch.as_tensor(file_affine if file_affine is not None else affine, dtype=torch.float64),
            "file_axes": torch.as_tensor(file_axes),
            "spatial_shape": np.asarray(vol.shape),
            "original_channel_dim": 0 if self.channel_first else float("nan"),
        }
        return MetaTensor(t, affine=affine_t, meta=meta)
