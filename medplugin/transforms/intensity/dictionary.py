"""Dictionary twins of the intensity transforms (Graham contrast, radial symmetry, Tsallis threshold)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.config import KeysCollection

from medplugin.transforms.intensity.array import GrahamContrast, RadialSymmetry, TsallisThreshold
from medplugin.transforms.utils import MaskedMapTransform, opt_keys

__all__ = [
    "GrahamContrastd",
    "GrahamContrastD",
    "GrahamContrastDict",
    "RadialSymmetryd",
    "RadialSymmetryD",
    "RadialSymmetryDict",
    "TsallisThresholdd",
    "TsallisThresholdD",
    "TsallisThresholdDict",
]


class GrahamContrastd(MaskedMapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.intensity.array.GrahamContrast` (Graham, Kaggle DR 2015).

    Args:
        keys: image keys.
        mask_key: key of the FOV mask (one or one per key); ``None``: no mask.
        allow_missing_keys: skip missing keys instead of raising.
        kwargs: the arguments of ``GrahamContrast`` (alpha, offset, sigma, sigma_fraction, value_range,
            outside_value).
    """

    backend = GrahamContrast.backend

    def __init__(self, keys: KeysCollection, mask_key: str | Sequence[str | None] | None = None,
                 allow_missing_keys: bool = False, **kwargs: Any) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, GrahamContrast(**kwargs), mask_key, allow_missing_keys)


class RadialSymmetryd(MaskedMapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.intensity.array.RadialSymmetry` (Loy & Zelinsky 2003).

    The (1, H, W) map is added under ``output_key`` (default ``"<key>_<polarity>_symmetry"``); the image is kept.

    Args:
        keys: image keys.
        output_key: name(s) of the new map key(s); ``None``: the default above.
        mask_key: key of the FOV mask restricting the voting pixels; ``None``: no mask.
        allow_missing_keys: skip missing keys instead of raising.
        kwargs: the arguments of ``RadialSymmetry`` (radii, polarity, alpha, beta, channel).
    """

    backend = RadialSymmetry.backend

    def __init__(self, keys: KeysCollection, output_key: str | Sequence[str | None] | None = None,
                 mask_key: str | Sequence[str | None] | None = None, allow_missing_keys: bool = False,
                 **kwargs: Any) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, RadialSymmetry(**kwargs), mask_key, allow_missing_keys)
        outs = opt_keys(output_key, len(self.keys), "output_key")
        polarity = self.transform.polarity
        self.output_key = dict(zip(self.keys, (o or f"{k}_{polarity}_symmetry" for o, k in zip(outs, self.keys))))

    def apply(self, d: dict, key, mask_key: str | None) -> None:
        """Add the symmetry map of ``d[key]`` under its output key."""
        d[self.output_key[key]] = self.transform(d[key], self.mask(d, mask_key))


class TsallisThresholdd(MaskedMapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.intensity.array.TsallisThreshold` (Portes de Albuquerque
    et al. 2004).

    Replaces each map by its candidate map (0..1) and stores the threshold (float) under
    ``"<key>_<threshold_postfix>"``.

    Args:
        keys: map keys.
        mask_key: key of the FOV mask; ``None``: no mask.
        threshold_postfix: postfix of the threshold key.
        allow_missing_keys: skip missing keys instead of raising.
        kwargs: the arguments of ``TsallisThreshold`` (q, bins, positive_only).
    """

    backend = TsallisThreshold.backend

    def __init__(self, keys: KeysCollection, mask_key: str | Sequence[str | None] | None = None,
                 threshold_postfix: str = "threshold", allow_missing_keys: bool = False, **kwargs: Any) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, TsallisThreshold(**kwargs, return_threshold=True), mask_key, allow_missing_keys)
        if not isinstance(threshold_postfix, str) or not threshold_postfix:
            raise ValueError(f"threshold_postfix must be a non-empty str, got {threshold_postfix!r}")
        self.threshold_postfix = threshold_postfix

    def apply(self, d: dict, key, mask_key: str | None) -> None:
        """Threshold ``d[key]`` and store the threshold."""
        d[key], d[f"{key}_{self.threshold_postfix}"] = self.transform(d[key], self.mask(d, mask_key))


GrahamContrastD = GrahamContrastDict = GrahamContrastd
RadialSymmetryD = RadialSymmetryDict = RadialSymmetryd
TsallisThresholdD = TsallisThresholdDict = TsallisThresholdd
