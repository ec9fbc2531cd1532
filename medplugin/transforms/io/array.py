"""Array transforms that load images: MONAI's ``LoadImage`` with medplugin's readers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import ImageReader
from monai.transforms import LoadImage
from monai.utils import TransformBackends

from medplugin.io.readers import Image2dReader, KneeVolumeReader

__all__ = ["LoadImage2d", "LoadKneeVolume"]


def _set_up(loader: LoadImage, reader: ImageReader, dtype) -> None:
    """Set ``loader`` up as ``LoadImage(reader, image_only=True, dtype=dtype, expanduser=False)``, ``reader`` alone.

    ``LoadImage.__init__`` is not called because it also constructs every reader MONAI has, and in MONAI 1.6
    one of them, ``NvImgCodecPydicomReader``, logs a warning at each construction where nvImageCodec is missing
    and, where it is installed, registers its decoder in pydicom for the whole process (which would change how
    our DICOM files decode). ``tests/transforms/io`` checks these attributes against ``LoadImage``'s own.
    """
    loader.auto_select = False
    loader.image_only = True
    loader.dtype = dtype
    loader.ensure_channel_first = False
    loader.simple_keys = False
    loader.pattern = None
    loader.sep = "."
    loader.expanduser = False  # the name stays as given, as in errors and in filename_or_obj
    loader.readers = []
    loader.register(reader)


class LoadImage2d(LoadImage):
    """Load a JPEG, PNG, BMP, TIFF, DICOM or 2D NIfTI file as a channel-first ``MetaTensor`` ``(C, H, W)``.

    ``LoadImage`` with :class:`medplugin.io.Image2dReader`: unlike MONAI's ``LoadImage`` with its PIL reader,
    rows come first (display orientation), colour and grayscale are converted to the requested channel count,
    DICOM radiographs get their VOI LUT and MONOCHROME1 inversion, and every failure is a
    :class:`medplugin.errors.BadInputError` naming the file. The file name is kept as given (no ``~``
    expansion). ``LoadImage(reader=Image2dReader(channels))`` gives the same images.

    Args:
        channels: 1 (grayscale), 3 (RGB) or ``None`` (as stored).
        dtype: output dtype; values are on a 0..255 scale.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, channels: int | None = 1, dtype: torch.dtype | None = torch.float32) -> None:
        _set_up(self, Image2dReader(channels=channels), dtype)
        self.channels = channels


class LoadKneeVolume(LoadImage):
    """Load a knee MRI exam (NIfTI file, DICOM series folder or MRNet ``.npy``) as a ``MetaTensor``.

    ``LoadImage`` with :class:`medplugin.io.KneeVolumeReader`: NIfTI and DICOM slice-first in sagittal order
    with their affine (:func:`medplugin.io.mrnet.read_knee_volume`), MRNet ``.npy`` with ``npy_spacing`` as a
    diagonal affine (MRNet publishes no spacing). The meta dict keeps ``affine`` (voxel ``(slice, row, col)``
    to RAS mm), ``original_affine`` and ``file_axes`` (the input file's grid, for writing results on it),
    ``filename_or_obj``, ``spatial_shape`` and ``original_channel_dim``. Every failure is a
    :class:`~medplugin.errors.BadInputError` naming the path.

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
        dtype: torch.dtype | None = torch.float32,
    ) -> None:
        _set_up(self, KneeVolumeReader(order=order, npy_spacing=npy_spacing, channel_first=channel_first), dtype)
        self.channel_first = channel_first
        self.order = order
