"""Intensities: radiograph and MRI normalisation, fundus contrast, radial symmetry maps and their threshold."""

from medplugin.transforms.intensity.array import (
    NORMALIZATIONS,
    GrahamContrast,
    RadialSymmetry,
    TsallisThreshold,
    fast_radial_symmetry,
    normalize_radiograph,
    percentile_scaler,
    tsallis_threshold,
)
from medplugin.transforms.intensity.dictionary import GrahamContrastd, RadialSymmetryd, TsallisThresholdd

__all__ = ["NORMALIZATIONS", "GrahamContrast", "GrahamContrastd", "RadialSymmetry", "RadialSymmetryd",
           "TsallisThreshold", "TsallisThresholdd", "fast_radial_symmetry", "normalize_radiograph",
           "percentile_scaler", "tsallis_threshold"]
