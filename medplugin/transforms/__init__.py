"""MONAI-style transforms (array and dictionary pairs) grouped by operation, and the per-task presets.

``medplugin/transforms/<operation>/{array,dictionary}.py`` as in MONAI: ``crop`` (to a mask's box, to a fundus
field of view), ``segment`` (with a segmentation bundle's trained network), ``intensity``, ``lesion`` (fundus
lesion candidates), ``labels`` (labels and masks from files), ``spatial`` (voxel grids), ``fast`` (the uint8
cache path and batched augmentation), ``io`` (loading); ``presets`` holds each task's preprocessing.
Everything is exported here, flat: bundles name ``medplugin.transforms.Foo``.
"""

from medplugin.transforms.crop import (
    NO_CROP_BOX,
    CropBoxToTensord,
    CropToMask,
    CropToMaskd,
    FundusFOVCrop,
    FundusFOVCropd,
    RememberShaped,
)
from medplugin.transforms.fast import BatchRandAugment, BatchRandAugmentd, CacheBoundary, ToUint8, ToUint8d
from medplugin.transforms.intensity import (
    GrahamContrast,
    GrahamContrastd,
    RadialSymmetry,
    RadialSymmetryd,
    TsallisThreshold,
    TsallisThresholdd,
    fast_radial_symmetry,
    normalize_radiograph,
    percentile_scaler,
    tsallis_threshold,
)
from medplugin.transforms.io import LoadImage2d, LoadImage2dd, LoadImage2dD, LoadImage2dDict
from medplugin.transforms.knee import LoadKneeVolume, LoadKneeVolumed
from medplugin.transforms.labels import (
    ClassIndexFromFile,
    ClassIndexFromFiled,
    LoadLungMask,
    LoadLungMaskd,
    MultiHotFromFile,
    MultiHotFromFiled,
)
from medplugin.transforms.lesion import (
    AnnotateCandidates,
    AnnotateCandidatesd,
    FundusPreprocessd,
    LesionCandidates,
    LesionCandidatesd,
    estimate_disc_and_fovea,
)
from medplugin.transforms.presets import (
    chest_xray_preprocessing,
    collate_with_defaults,
    fundus_augmentation,
    fundus_classification_preprocessing,
    fundus_normalization,
    image_classification_augmentation,
    image_classification_preprocessing,
    knee_classification_augmentation,
    knee_classification_preprocessing,
    lung_segmentation_augmentation,
    lung_segmentation_preprocessing,
)
from medplugin.transforms.segment import RESIZE_2D, SegmentWithModel, SegmentWithModeld, clean_mask
from medplugin.transforms.spatial import CheckGeometry, CheckGeometryd, ToOriginalOrientation, ToOriginalOrientationd

__all__ = [
    "NO_CROP_BOX",
    "RESIZE_2D",
    "AnnotateCandidates",
    "AnnotateCandidatesd",
    "BatchRandAugment",
    "BatchRandAugmentd",
    "CacheBoundary",
    "CheckGeometry",
    "CheckGeometryd",
    "ClassIndexFromFile",
    "ClassIndexFromFiled",
    "CropBoxToTensord",
    "CropToMask",
    "CropToMaskd",
    "FundusFOVCrop",
    "FundusFOVCropd",
    "FundusPreprocessd",
    "GrahamContrast",
    "GrahamContrastd",
    "LesionCandidates",
    "LesionCandidatesd",
    "LoadImage2d",
    "LoadImage2dd",
    "LoadImage2dD",
    "LoadImage2dDict",
    "LoadKneeVolume",
    "LoadKneeVolumed",
    "LoadLungMask",
    "LoadLungMaskd",
    "MultiHotFromFile",
    "MultiHotFromFiled",
    "RadialSymmetry",
    "RadialSymmetryd",
    "RememberShaped",
    "SegmentWithModel",
    "SegmentWithModeld",
    "ToOriginalOrientation",
    "ToOriginalOrientationd",
    "ToUint8",
    "ToUint8d",
    "TsallisThreshold",
    "TsallisThresholdd",
    "chest_xray_preprocessing",
    "clean_mask",
    "collate_with_defaults",
    "estimate_disc_and_fovea",
    "fast_radial_symmetry",
    "fundus_augmentation",
    "fundus_classification_preprocessing",
    "fundus_normalization",
    "image_classification_augmentation",
    "image_classification_preprocessing",
    "knee_classification_augmentation",
    "knee_classification_preprocessing",
    "lung_segmentation_augmentation",
    "lung_segmentation_preprocessing",
    "normalize_radiograph",
    "percentile_scaler",
    "tsallis_threshold",
]
