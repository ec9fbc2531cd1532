"""Transforms that load images: MONAI's ``LoadImage(d)`` with the readers of :mod:`medplugin.io`."""

from medplugin.transforms.io.array import LoadImage2d, LoadKneeVolume
from medplugin.transforms.io.dictionary import (
    LoadImage2dD,
    LoadImage2dd,
    LoadImage2dDict,
    LoadKneeVolumeD,
    LoadKneeVolumed,
    LoadKneeVolumeDict,
)

__all__ = [
    "LoadImage2d",
    "LoadImage2dd",
    "LoadImage2dD",
    "LoadImage2dDict",
    "LoadKneeVolume",
    "LoadKneeVolumed",
    "LoadKneeVolumeD",
    "LoadKneeVolumeDict",
]
