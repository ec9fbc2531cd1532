"""MONAI-style transforms (array and dictionary pairs) and the per-task preprocessing presets."""

from medplugin.transforms.io import LoadImage2d, LoadImage2dd, LoadImage2dD, LoadImage2dDict
from medplugin.transforms.presets import image_classification_augmentation, image_classification_preprocessing

__all__ = [
    "LoadImage2d",
    "LoadImage2dd",
    "LoadImage2dD",
    "LoadImage2dDict",
    "image_classification_augmentation",
    "image_classification_preprocessing",
]
