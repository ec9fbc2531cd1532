"""Voxel grids: a mask on its image's grid, arrays back in the voxel order of their file."""

from medplugin.transforms.spatial.array import CheckGeometry, ToOriginalOrientation, has_trace, to_input_grid
from medplugin.transforms.spatial.dictionary import CheckGeometryd, ToOriginalOrientationd

__all__ = ["CheckGeometry", "CheckGeometryd", "ToOriginalOrientation", "ToOriginalOrientationd", "has_trace",
           "to_input_grid"]
