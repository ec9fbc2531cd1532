"""Each task's preprocessing and augmentation, defined once and called by every config of its bundle."""

from medplugin.transforms.presets.chest import chest_xray_preprocessing, collate_with_defaults
from medplugin.transforms.presets.classification import (
    calibrated_postprocessing,
    image_classification_augmentation,
    image_classification_preprocessing,
)
from medplugin.transforms.presets.fundus import (
    fundus_augmentation,
    fundus_classification_preprocessing,
    fundus_normalization,
)
from medplugin.transforms.presets.knee import knee_classification_augmentation, knee_classification_preprocessing
from medplugin.transforms.presets.lung import lung_segmentation_augmentation, lung_segmentation_preprocessing

__all__ = [
    "calibrated_postprocessing",
    "chest_xray_preprocessing",
    "collate_with_defaults",
    "fundus_augmentation",
    "fundus_classification_preprocessing",
    "fundus_normalization",
    "image_classification_augmentation",
    "image_classification_preprocessing",
    "knee_classification_augmentation",
    "knee_classification_preprocessing",
    "lung_segmentation_augmentation",
    "lung_segmentation_preprocessing",
]
