"""Labels from files: class labels in MONAI Label label files, 2D masks (one file or the union of several)."""

from medplugin.transforms.labels.array import ClassIndexFromFile, LoadLungMask, MultiHotFromFile, read_label_file
from medplugin.transforms.labels.dictionary import ClassIndexFromFiled, LoadLungMaskd, MultiHotFromFiled

__all__ = ["ClassIndexFromFile", "ClassIndexFromFiled", "LoadLungMask", "LoadLungMaskd", "MultiHotFromFile",
           "MultiHotFromFiled", "read_label_file"]
