"""Voxel grids: a mask on its image's grid, arrays back in the voxel order of their file."""

from medplugin.transforms.spatial.array import CheckGeometry, ToOriginalOrientation
from medplugin.transforms.spatial.dictionary import CheckGeometryd, ToOriginalOrientationd

__all__ = ["CheckGeometry", "CheckGeometryd", "ToOriginalOrientation", "ToOriginalOrientationd"]
