"""Knee MRI transforms: load exams, segment the ACL region with a trained 3D U-Net, crop to it."""

from medplugin.transforms.knee.array import (
    EMPTY_MASK_MODES,
    CheckGeometry,
    CropToMask,
    SegmentROI,
    knee_intensity_scaler,
    mask_bounding_box,
    to_file_grid,
    voxel_spacing,
)
from medplugin.transforms.knee.dictionary import (
    CheckGeometryd,
    CheckGeometryD,
    CheckGeometryDict,
    CropToMaskd,
    CropToMaskD,
    CropToMaskDict,
    SegmentROId,
    SegmentROID,
    SegmentROIDict,
)

__all__ = [
    "EMPTY_MASK_MODES",
    "CheckGeometry",
    "CheckGeometryd",
    "CheckGeometryD",
    "CheckGeometryDict",
    "CropToMask",
    "CropToMaskd",
    "CropToMaskD",
    "CropToMaskDict",
    "SegmentROI",
    "SegmentROId",
    "SegmentROID",
    "SegmentROIDict",
    "knee_intensity_scaler",
    "mask_bounding_box",
    "to_file_grid",
    "voxel_spacing",
]
