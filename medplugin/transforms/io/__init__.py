"""Transforms that load images."""

from medplugin.transforms.io.array import LoadImage2d
from medplugin.transforms.io.dictionary import LoadImage2dd, LoadImage2dD, LoadImage2dDict

__all__ = ["LoadImage2d", "LoadImage2dd", "LoadImage2dD", "LoadImage2dDict"]
