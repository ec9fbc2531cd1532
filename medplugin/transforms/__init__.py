"""MONAI-style transforms (array and dictionary pairs) and the per-task preprocessing presets."""

from medplugin.transforms.chest import LungCrop, LungCropd, SegmentLungs, SegmentLungsd
from medplugin.transforms.fast import BatchRandAugment, BatchRandAugmentd, CacheBoundary, ToUint8, ToUint8d
from medplugin.transforms.io import (
    LoadImage2d,
    LoadImage2dd,
    LoadImage2dD,
    LoadImage2dDict,
    LoadKneeVolume,
    LoadKneeVolumed,
)
from medplugin.transforms.knee import (
    CropToMask,
    CropToMaskd,
    SegmentROI,
    SegmentROId,
)
from medplugin.transforms.labels import (
    ClassIndexFromFile,
    ClassIndexFromFiled,
    MultiHotFromFile,
    MultiHotFromFiled,
    ResizeToSourceImage,
    ResizeToSourceImaged,
    ToSourceVoxelOrder,
    ToSourceVoxelOrderd,
)
from medplugin.transforms.presets import image_classification_augmentation, image_classification_preprocessing

__all__ = [
    "BatchRandAugment",
    "BatchRandAugmentd",
    "CacheBoundary",
    "ToUint8",
    "ToUint8d",
    "LungCrop",
    "LungCropd",
    "SegmentLungs",
    "SegmentLungsd",
    "CropToMask",
    "CropToMaskd",
    "LoadKneeVolume",
    "LoadKneeVolumed",
    "SegmentROI",
    "SegmentROId",
    "LoadImage2d",
    "LoadImage2dd",
    "LoadImage2dD",
    "LoadImage2dDict",
    "ClassIndexFromFile",
    "ClassIndexFromFiled",
    "MultiHotFromFile",
    "MultiHotFromFiled",
    "ResizeToSourceImage",
    "ResizeToSourceImaged",
    "ToSourceVoxelOrder",
    "ToSourceVoxelOrderd",
    "image_classification_augmentation",
    "image_classification_preprocessing",
]
