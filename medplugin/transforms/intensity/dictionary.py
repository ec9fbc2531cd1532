"""Dictionary twins of the intensity transforms (Graham contrast, radial symmetry, Tsallis threshold)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform

from medplugin.transforms.intensity.array import GrahamContrast, RadialSymmetry, TsallisThreshold
from medplugin.transforms.utils import opt_keys

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


class GrahamContrastd(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.intensity.array.GrahamContrast` (Graham, Kaggle DR 2015).

    Args:
        keys: image keys.
        mask_key: key of the FOV mask (one or one per key); ``None``: no mask.
        alpha, offset, sigma, sigma_fraction, value_range, outside_value: see ``GrahamContrast``.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = GrahamContrast.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | Sequence[str | None] | None = None,
        alpha: float = 4.0,
        offset: float = 128.0,
        sigma: float | None = None,
        sigma_fraction: float = 1.0 / 30.0,
        value_range: float = 255.0,
        outside_value: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, allow_missing_keys)
        self.mask_key = opt_keys(mask_key, len(self.keys), "mask_key")
        self.contrast = GrahamContrast(alpha, offset, sigma, sigma_fraction, value_range, outside_value)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Enhance every key."""
        d = dict(data)
        for key, mkey in self.key_iterator(d, self.mask_key):
            d[key] = self.contrast(d[key], d[mkey] if mkey is not None else None)
        return d


class RadialSymmetryd(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.intensity.array.RadialSymmetry` (Loy & Zelinsky 2003).

    The (1, H, W) map is added under ``output_key`` (default ``"<key>_<polarity>_symmetry"``); the image is kept.

    Args:
        keys: image keys.
        output_key: name(s) of the new map key(s); ``None``: the default above.
        mask_key: key of the FOV mask restricting the voting pixels; ``None``: no mask.
        radii, polarity, alpha, beta, channel: see ``RadialSymmetry``.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = RadialSymmetry.backend

    def __init__(
        self,
        keys: KeysCollection,
        output_key: str | Sequence[str | None] | None = None,
        mask_key: str | Sequence[str | None] | None = None,
        radii: Sequence[int] | None = None,
        polarity: str = "dark",
        alpha: float = 2.0,
        beta: float = 0.1,
        channel: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, allow_missing_keys)
        self.symmetry = RadialSymmetry(radii, polarity, alpha, beta, channel)
        outs = opt_keys(output_key, len(self.keys), "output_key")
        self.output_key = tuple(o if o is not None else f"{k}_{polarity}_symmetry" for o, k in zip(outs, self.keys))
        self.mask_key = opt_keys(mask_key, len(self.keys), "mask_key")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Add the symmetry map of every key."""
        d = dict(data)
        for key, okey, mkey in self.key_iterator(d, self.output_key, self.mask_key):
            d[okey] = self.symmetry(d[key], d[mkey] if mkey is not None else None)
        return d


class TsallisThresholdd(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.intensity.array.TsallisThreshold` (Portes de Albuquerque
    et al. 2004).

    Replaces each map by its candidate map (0..1) and stores the threshold (float) under
    ``"<key>_<threshold_postfix>"``.

    Args:
        keys: map keys.
        mask_key: key of the FOV mask; ``None``: no mask.
        q, bins, positive_only: see ``TsallisThreshold``.
        threshold_postfix: postfix of the threshold key.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = TsallisThreshold.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | Sequence[str | None] | None = None,
        q: float = 0.8,
        bins: int = 256,
        positive_only: bool = True,
        threshold_postfix: str = "threshold",
        allow_missing_keys: bool = False,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, allow_missing_keys)
        self.thresholder = TsallisThreshold(q, bins, positive_only, return_threshold=True)
        self.mask_key = opt_keys(mask_key, len(self.keys), "mask_key")
        if not isinstance(threshold_postfix, str) or not threshold_postfix:
            raise ValueError(f"threshold_postfix must be a non-empty str, got {threshold_postfix!r}")
        self.threshold_postfix = threshold_postfix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, Any]:
        """Threshold every key."""
        d = dict(data)
        for key, mkey in self.key_iterator(d, self.mask_key):
            d[key], d[f"{key}_{self.threshold_postfix}"] = self.thresholder(d[key], d[mkey] if mkey is not None else None)
        return d


GrahamContrastD = GrahamContrastDict = GrahamContrastd
RadialSymmetryD = RadialSymmetryDict = RadialSymmetryd
TsallisThresholdD = TsallisThresholdDict = TsallisThresholdd
