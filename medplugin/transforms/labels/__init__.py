"""Labels as MONAI Label exchanges them: class labels in label files, label maps at the image's own size."""

from medplugin.transforms.labels.array import ClassIndexFromFile, ResizeToSourceImage, ToSourceVoxelOrder
from medplugin.transforms.labels.dictionary import (
    ClassIndexFromFiled,
    ClassIndexFromFileD,
    ClassIndexFromFileDict,
    ResizeToSourceImaged,
    ResizeToSourceImageD,
    ResizeToSourceImageDict,
    ToSourceVoxelOrderd,
    ToSourceVoxelOrderD,
    ToSourceVoxelOrderDict,
)

__all__ = [
    "ClassIndexFromFile",
    "ClassIndexFromFiled",
    "ClassIndexFromFileD",
    "ClassIndexFromFileDict",
    "ResizeToSourceImage",
    "ResizeToSourceImaged",
    "ResizeToSourceImageD",
    "ResizeToSourceImageDict",
    "ToSourceVoxelOrder",
    "ToSourceVoxelOrderd",
    "ToSourceVoxelOrderD",
    "ToSourceVoxelOrderDict",
]
