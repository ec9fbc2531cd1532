"""Dictionary transforms that load 2D images."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medplugin.transforms.io.array import LoadImage2d

__all__ = ["LoadImage2dd", "LoadImage2dD", "LoadImage2dDict"]


class LoadImage2dd(MapTransform):
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
        dtype: torch.dtype = torch.float32,
        path_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.path_key = path_key
        self.loader = LoadImage2d(channels=channels, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.path_key is not None and self.path_key not in d:
                d[self.path_key] = str(d[key])
            d[key] = self.loader(d[key])
        return d


LoadImage2dD = LoadImage2dDict = LoadImage2dd
