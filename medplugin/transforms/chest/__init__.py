"""Chest radiograph transforms: lung masks, segmenting the lung fields with a trained 2D U-Net, cropping to them,
and the lung segmentation bundle's preprocessing."""

from medplugin.transforms.chest.array import (
    EMPTY_MASK_MODES,
    LUNG_RESIZE,
    LUNG_SEG_NORMALIZATIONS,
    LoadLungMask,
    LungCrop,
    SegmentLungs,
    clean_lung_mask,
    lung_bounding_box,
    normalize_radiograph,
)
from medplugin.transforms.chest.dictionary import (
    LoadLungMaskd,
    LoadLungMaskD,
    LoadLungMaskDict,
    LungCropd,
    LungCropD,
    LungCropDict,
    SegmentLungsd,
    SegmentLungsD,
    SegmentLungsDict,
)
from medplugin.transforms.chest.presets import lung_segmentation_augmentation, lung_segmentation_preprocessing

__all__ = [
    "EMPTY_MASK_MODES",
    "LUNG_RESIZE",
    "LUNG_SEG_NORMALIZATIONS",
    "LoadLungMask",
    "LoadLungMaskd",
    "LoadLungMaskD",
    "LoadLungMaskDict",
    "LungCrop",
    "LungCropd",
    "LungCropD",
    "LungCropDict",
    "SegmentLungs",
    "SegmentLungsd",
    "SegmentLungsD",
    "SegmentLungsDict",
    "clean_lung_mask",
    "lung_bounding_box",
    "lung_segmentation_augmentation",
    "lung_segmentation_preprocessing",
    "normalize_radiograph",
]
