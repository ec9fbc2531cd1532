"""Labels as MONAI Label exchanges them: class labels in label files, label maps at the image's own size."""

from medplugin.transforms.labels.array import (
    ClassIndexFromFile,
    MultiHotFromFile,
    ResizeToSourceImage,
    ToSourceVoxelOrder,
    read_label_file,
)
from medplugin.transforms.labels.dictionary import (
    ClassIndexFromFiled,
    ClassIndexFromFileD,
    ClassIndexFromFileDict,
    MultiHotFromFiled,
    MultiHotFromFileD,
    MultiHotFromFileDict,
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
    "MultiHotFromFile",
    "MultiHotFromFiled",
    "MultiHotFromFileD",
    "MultiHotFromFileDict",
    "read_label_file",
    "ResizeToSourceImage",
    "ResizeToSourceImaged",
    "ResizeToSourceImageD",
    "ResizeToSourceImageDict",
    "ToSourceVoxelOrder",
    "ToSourceVoxelOrderd",
    "ToSourceVoxelOrderD",
    "ToSourceVoxelOrderDict",
]
