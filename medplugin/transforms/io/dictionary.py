"""Dictionary transforms that load images with medplugin's readers, as MONAI's ``LoadImaged`` does."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, MapTransform

from medplugin.transforms.io.array import LoadImage2d, LoadKneeVolume

__all__ = [
    "LoadImage2dd",
    "LoadImage2dD",
    "LoadImage2dDict",
    "LoadKneeVolumed",
    "LoadKneeVolumeD",
    "LoadKneeVolumeDict",
]


class _LoadWithPath(MapTransform):
    """Replace each path under ``keys`` by what ``loader`` reads, keeping the first key's path under ``path_key``.

    What ``LoadImaged(keys, reader=...)`` does with ``image_only=True``, plus ``path_key``.
    """

    def __init__(self, keys: KeysCollection, loader: LoadImage, path_key: str | None, allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = loader
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.path_key is not None and self.path_key not in d:
                d[self.path_key] = os.fspath(d[key])
            d[key] = self.loader(d[key])
        return d


class LoadImage2dd(_LoadWithPath):
    """Dictionary wrapper of :class:`LoadImage2d`: replaces each file path under ``keys`` by its image.

    Args:
        keys: keys holding file paths.
        channels: 1 (grayscale), 3 (RGB) or ``None`` (as stored).
        dtype: output dtype.
        path_key: if set, the first key's file path is also kept under this key (for reports and overlays).
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = LoadImage2d.backend

    def __init__(
        self,
        keys: KeysCollection,
        channels: int | None = 1,
        dtype: torch.dtype | None = torch.float32,
        path_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, LoadImage2d(channels=channels, dtype=dtype), path_key, allow_missing_keys)


class LoadKneeVolumed(_LoadWithPath):
    """Dictionary wrapper of :class:`LoadKneeVolume`: replaces each path under ``keys`` by its volume.

    Args:
        keys: keys holding paths (NIfTI file, DICOM series folder or MRNet ``.npy``).
        channel_first: add a leading channel.
        order: ``"sagittal"`` or ``"file"``.
        npy_spacing: voxel size assumed for ``.npy`` exams.
        dtype: output dtype.
        path_key: if set, the first key's path is also kept under this key (for reports).
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = LoadKneeVolume.backend

    def __init__(
        self,
        keys: KeysCollection,
        channel_first: bool = True,
        order: str = "sagittal",
        npy_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        dtype: torch.dtype | None = torch.float32,
        path_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        loader = LoadKneeVolume(channel_first=channel_first, order=order, npy_spacing=npy_spacing, dtype=dtype)
        super().__init__(keys, loader, path_key, allow_missing_keys)


LoadImage2dD = LoadImage2dDict = LoadImage2dd
LoadKneeVolumeD = LoadKneeVolumeDict = LoadKneeVolumed
