"""Array transforms that load 2D images."""

from __future__ import annotations

import os

import torch
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends

from medplugin.io.image2d import read_image_2d

__all__ = ["LoadImage2d"]


class LoadImage2d(Transform):
    """Load a JPEG, PNG, BMP, TIFF or DICOM file as a channel-first ``MetaTensor`` ``(C, H, W)``.

    Unlike MONAI's ``LoadImage`` with the PIL reader, rows come first (display orientation), colour and
    grayscale are converted to the requested channel count, DICOM radiographs get their VOI LUT and
    MONOCHROME1 inversion, and every failure is a :class:`medplugin.errors.BadInputError` naming the file.

    Args:
        channels: 1 (grayscale), 3 (RGB) or ``None`` (as stored).
        dtype: output dtype; values are on a 0..255 scale.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, channels: int | None = 1, dtype: torch.dtype = torch.float32) -> None:
        if channels not in (1, 3, None):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}.")
        self.channels = channels
        self.dtype = dtype

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        """Read ``filename``; its meta dict keeps ``filename_or_obj`` and ``original_shape``."""
        arr, meta = read_image_2d(filename, channels=self.channels)
        return MetaTensor(torch.as_tensor(arr, dtype=self.dtype), meta=meta)
