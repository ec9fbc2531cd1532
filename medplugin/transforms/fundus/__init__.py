"""Fundus photograph transforms: FOV crop, Graham contrast, radial symmetry lesion candidates."""

from medplugin.transforms.fundus.array import (
    AnnotateCandidates,
    FundusFOVCrop,
    GrahamContrast,
    LesionCandidates,
    RadialSymmetry,
    TsallisThreshold,
    as_rgb,
    estimate_disc_and_fovea,
    fast_radial_symmetry,
    tsallis_threshold,
)
from medplugin.transforms.fundus.dictionary import (
    AnnotateCandidatesd,
    FundusFOVCropd,
    FundusPreprocessd,
    GrahamContrastd,
    LesionCandidatesd,
    RadialSymmetryd,
    TsallisThresholdd,
)
from medplugin.transforms.fundus.presets import (
    fundus_augmentation,
    fundus_classification_preprocessing,
    fundus_normalization,
)

__all__ = [
    "AnnotateCandidates",
    "AnnotateCandidatesd",
    "FundusFOVCrop",
    "FundusFOVCropd",
    "FundusPreprocessd",
    "GrahamContrast",
    "GrahamContrastd",
    "LesionCandidates",
    "LesionCandidatesd",
    "RadialSymmetry",
    "RadialSymmetryd",
    "TsallisThreshold",
    "TsallisThresholdd",
    "as_rgb",
    "estimate_disc_and_fovea",
    "fast_radial_symmetry",
    "fundus_augmentation",
    "fundus_classification_preprocessing",
    "fundus_normalization",
    "tsallis_threshold",
]
