"""Dictionary wrapper of :class:`~medplugin.transforms.knee.array.LoadKneeVolume`."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medplugin.transforms.knee.array import LoadKneeVolume

__all__ = ["LoadKneeVolumed", "LoadKneeVolumeD", "LoadKneeVolumeDict"]


class LoadKneeVolumed(MapTransform):
    """Dictionary wrapper of :class:`LoadKneeVolume`: replaces each file path under ``keys`` by its volume.

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
        dtype: torch.dtype = torch.float32,
        path_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadKneeVolume(channel_first=channel_first, order=order, npy_spacing=npy_spacing, dtype=dtype)
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.path_key is not None and self.path_key not in d:
                d[self.path_key] = os.fspath(d[key])
            d[key] = self.loader(d[key])
        return d


LoadKneeVolumeD = LoadKneeVolumeDict = LoadKneeVolumed
