"""An input as the gate's content rules see it: the file's own channels and values, before any bundle preprocessing.

The bundles' loaders already change what the gate must judge (the chest loader turns a colour photograph into
grayscale, the fundus loader a radiograph into RGB), so the gate reads the file itself: 2-D files with
:func:`medplugin.io.image2d.read_image_2d` keeping their channels (0..255 scale, as every 2-D bundle loads them),
knee exams (NIfTI, DICOM series folder, MRNet ``.npy``) with :class:`medplugin.transforms.LoadKneeVolume`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["load_for_gate"]


def load_for_gate(path: str | os.PathLike, spatial_dims: int | None = 2) -> Any:
    """The input at ``path`` channel-first, as the content rules take it, or ``None`` when it cannot be read.

    Args:
        path: an image file, or for ``spatial_dims=3`` a knee exam (file or DICOM series folder).
        spatial_dims: 2 (radiographs, photographs, B-scans; the file's own channels, 0..255) or 3 (``(1, slices,
            rows, columns)``, the file's intensities).

    Returns:
        the array, or ``None`` for an input its reader refuses (its error row already says why; the gate then
        judges the file by its header, :func:`medplugin.gate.check_file_shape`).
    """
    try:
        if spatial_dims == 3:
            from medplugin.transforms import LoadKneeVolume

            volume = LoadKneeVolume(channel_first=True)(str(path))
            return np.asarray(volume.as_tensor() if hasattr(volume, "as_tensor") else volume)
        from medplugin.io.image2d import read_image_2d

        return read_image_2d(path, channels=None)[0]
    except Exception:  # noqa: BLE001 - BadInputError, or MONAI's RuntimeError around it: the error row says why
        return None
