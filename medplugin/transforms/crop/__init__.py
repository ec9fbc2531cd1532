"""Cropping: to a mask's bounding box (2D or 3D, invertible), to a fundus field of view."""

from medplugin.transforms.crop.array import EMPTY_MASK_MODES, MARGIN_UNITS, CropToMask, FundusFOVCrop
from medplugin.transforms.crop.dictionary import (
    NO_CROP_BOX,
    CropBoxToTensord,
    CropToMaskd,
    FundusFOVCropd,
    RememberShaped,
)

__all__ = ["EMPTY_MASK_MODES", "MARGIN_UNITS", "NO_CROP_BOX", "CropBoxToTensord", "CropToMask", "CropToMaskd",
           "FundusFOVCrop", "FundusFOVCropd", "RememberShaped"]
