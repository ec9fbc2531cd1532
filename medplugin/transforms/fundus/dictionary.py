"""Dictionary twins of the fundus array transforms, and the composite :class:`FundusPreprocessd`.

Each ``Food`` wraps ``Foo`` from :mod:`medplugin.transforms.fundus.array`; see there for the methods and the
papers they come from.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type, ensure_tuple_rep

from medplugin.transforms.fundus.array import (
    AnnotateCandidates,
    FundusFOVCrop,
    GrahamContrast,
    LesionCandidates,
    RadialSymmetry,
    TsallisThreshold,
)

__all__ = [
    "FundusFOVCropd",
    "GrahamContrastd",
    "RadialSymmetryd",
    "TsallisThresholdd",
    "LesionCandidatesd",
    "AnnotateCandidatesd",
    "FundusPreprocessd",
]

logger = logging.getLogger(__name__)


def _opt_keys(value: str | Sequence[str | None] | None, n: int, name: str) -> tuple[str | None, ...]:
    out = ensure_tuple_rep(value, n)
    if any(v is not None and not isinstance(v, str) for v in out):
        raise ValueError(f"{name} must be None, a str or one str per key, got {value!r}")
    return out


class FundusFOVCropd(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.fundus.array.FundusFOVCrop`.

    Args:
        keys: image keys to crop.
        spatial_size: output side in pixels.
        mask_key: where to store each key's FOV mask (1, S, S) float32; one name or one per key; ``None``: none.
        threshold: see ``FundusFOVCrop``.
        mask_scale: see ``FundusFOVCrop``.
        min_area_fraction: see ``FundusFOVCrop``.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = FundusFOVCrop.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int = 512,
        mask_key: str | Sequence[str | None] | None = None,
        threshold: float = 0.15,
        mask_scale: float = 1.0,
        min_area_fraction: float = 0.05,
        allow_missing_keys: bool = False,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, allow_missing_keys)
        self.mask_key = _opt_keys(mask_key, len(self.keys), "mask_key")
        self.cropper = FundusFOVCrop(spatial_size, threshold, mask_scale, True, min_area_fraction)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Crop every key; store masks under ``mask_key``."""
        d = dict(data)
        for key, mkey in self.key_iterator(d, self.mask_key):
            d[key], mask = self.cropper(d[key])
            if mkey is not None:
                d[mkey] = mask
        return d


class GrahamContrastd(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.fundus.array.GrahamContrast` (Graham, Kaggle DR 2015).

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
        self.mask_key = _opt_keys(mask_key, len(self.keys), "mask_key")
        self.contrast = GrahamContrast(alpha, offset, sigma, sigma_fraction, value_range, outside_value)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Enhance every key."""
        d = dict(data)
        for key, mkey in self.key_iterator(d, self.mask_key):
            d[key] = self.contrast(d[key], d[mkey] if mkey is not None else None)
        return d


class RadialSymmetryd(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.fundus.array.RadialSymmetry` (Loy & Zelinsky 2003).

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
        outs = _opt_keys(output_key, len(self.keys), "output_key")
        self.output_key = tuple(o if o is not None else f"{k}_{polarity}_symmetry" for o, k in zip(outs, self.keys))
        self.mask_key = _opt_keys(mask_key, len(self.keys), "mask_key")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Add the symmetry map of every key."""
        d = dict(data)
        for key, okey, mkey in self.key_iterator(d, self.output_key, self.mask_key):
            d[okey] = self.symmetry(d[key], d[mkey] if mkey is not None else None)
        return d


class TsallisThresholdd(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.fundus.array.TsallisThreshold` (Portes de Albuquerque
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
        self.mask_key = _opt_keys(mask_key, len(self.keys), "mask_key")
        if not isinstance(threshold_postfix, str) or not threshold_postfix:
            raise ValueError(f"threshold_postfix must be a non-empty str, got {threshold_postfix!r}")
        self.threshold_postfix = threshold_postfix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, Any]:
        """Threshold every key."""
        d = dict(data)
        for key, mkey in self.key_iterator(d, self.mask_key):
            d[key], d[f"{key}_{self.threshold_postfix}"] = self.thresholder(d[key], d[mkey] if mkey is not None else None)
        return d


class LesionCandidatesd(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.fundus.array.LesionCandidates`.

    Stores the (N, 5) candidates ``[row, col, radius, polarity, score]`` under ``candidates_key``. Variable-N
    arrays do not collate into batches: drop the key (or use ``AnnotateCandidatesd``) before a DataLoader.

    Args:
        keys: image keys.
        candidates_key: where to store the candidates (one name or one per key).
        mask_key: key of the FOV mask; ``None``: non-black pixels.
        fovea_key: key holding the fovea (row, col); enables the fovea filter; ``None``: argument/estimate.
        disc_key: key holding the optic disc centre (row, col); ``None``: not used unless estimated.
        kwargs: the arguments of ``LesionCandidates`` (radii, alpha, beta, q, min_distance, max_fovea_distance,
            disc_diameter, estimate_fovea, polarity, channel, max_candidates).
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = LesionCandidates.backend

    def __init__(
        self,
        keys: KeysCollection,
        candidates_key: str | Sequence[str] = "candidates",
        mask_key: str | None = None,
        fovea_key: str | None = None,
        disc_key: str | None = None,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, allow_missing_keys)
        self.finder = LesionCandidates(**kwargs)
        self.candidates_key = _opt_keys(candidates_key, len(self.keys), "candidates_key")
        if any(c is None for c in self.candidates_key):
            raise ValueError(f"candidates_key must name a key, got {candidates_key!r}")
        self.mask_key, self.fovea_key, self.disc_key = mask_key, fovea_key, disc_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Find the candidates of every key."""
        d = dict(data)
        for key, ckey in self.key_iterator(d, self.candidates_key):
            mask = d[self.mask_key] if self.mask_key is not None else None
            fovea = d.get(self.fovea_key) if self.fovea_key is not None else None
            disc = d.get(self.disc_key) if self.disc_key is not None else None
            d[ckey] = self.finder(d[key], mask, fovea=fovea, disc=disc)
        return d


class AnnotateCandidatesd(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.fundus.array.AnnotateCandidates`.

    Args:
        keys: image keys (annotated in place).
        candidates_key: key of the (N, 5) candidates (one or one per key).
        mode, dark_color, bright_color, thickness, value_range: see ``AnnotateCandidates``.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = AnnotateCandidates.backend

    def __init__(
        self,
        keys: KeysCollection,
        candidates_key: str | Sequence[str] = "candidates",
        mode: str = "draw",
        dark_color: Sequence[float] = (0.0, 1.0, 1.0),
        bright_color: Sequence[float] = (0.0, 0.0, 1.0),
        thickness: float | None = None,
        value_range: float = 255.0,
        allow_missing_keys: bool = False,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, allow_missing_keys)
        self.annotator = AnnotateCandidates(mode, dark_color, bright_color, thickness, value_range)
        self.candidates_key = _opt_keys(candidates_key, len(self.keys), "candidates_key")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Annotate every key."""
        d = dict(data)
        for key, ckey in self.key_iterator(d, self.candidates_key):
            d[key] = self.annotator(d[key], d[ckey])
        return d


class FundusPreprocessd(MapTransform):
    """The whole fundus preprocessing, one ``mode`` override away in a bundle config.

    - ``"original"``: FOV crop and resize (:class:`FundusFOVCropd`) -> 3 channels.
    - ``"enhanced"``: + Graham contrast (Kaggle DR 2015) inside the FOV -> 3 channels.
    - ``"annotated"``: enhanced + lesion candidates (radial symmetry, Loy & Zelinsky 2003; Tsallis threshold,
      Portes de Albuquerque et al. 2004), found on the cropped *original* image (true gradients, before the
      gain of 4 saturates spots) and drawn on the enhanced image (``annotate="draw"``, 3 channels) or stacked
      as dark and bright candidate maps (``annotate="channels"``, 5 channels).

    Input: RGB (C, H, W) on the 0-``value_range`` scale (0-255 for JPEGs as loaded). Output: float32 in [0, 1],
    channel-first, (out_channels(mode, annotate), S, S), of the input's array type. Use
    :meth:`out_channels` for the network's ``in_channels``. MetaTensor inputs keep their metadata, but their
    affine does not describe the crop (2D photographs need none).

    Args:
        keys: image keys.
        mode: ``"original"``, ``"enhanced"`` or ``"annotated"``.
        spatial_size: output side in pixels.
        annotate: ``"draw"`` or ``"channels"`` (used by ``mode="annotated"``).
        value_range: the input intensity scale.
        mask_key: store the FOV mask (1, S, S) under this key; ``None``: not stored.
        candidates_key: store the (N, 5) candidates under this key (annotated mode); ``None``: not stored
            (variable-N arrays do not collate).
        graham_alpha: Graham contrast gain.
        graham_sigma_fraction: Graham blur sigma as a fraction of ``spatial_size``.
        estimate_fovea: keep only candidates within ``max_fovea_distance`` disc diameters of the estimated fovea
            (off by default: DR grading counts lesions over the whole retina).
        max_fovea_distance: see ``LesionCandidates``.
        candidate_kwargs: further ``LesionCandidates`` arguments (radii, beta, q, min_distance, ...).
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]
    MODES = ("original", "enhanced", "annotated")
    ANNOTATIONS = ("draw", "channels")

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "original",
        spatial_size: int = 512,
        annotate: str = "draw",
        value_range: float = 255.0,
        mask_key: str | None = None,
        candidates_key: str | None = None,
        graham_alpha: float = 4.0,
        graham_sigma_fraction: float = 1.0 / 30.0,
        estimate_fovea: bool = False,
        max_fovea_distance: float | None = 2.0,
        candidate_kwargs: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, allow_missing_keys)
        self.out_channels(mode, annotate)  # validates both
        self.mode, self.annotate = mode, annotate
        if value_range <= 0:
            raise ValueError(f"value_range must be > 0, got {value_range!r}")
        self.value_range = float(value_range)
        self.mask_key, self.candidates_key = mask_key, candidates_key
        self.crop = FundusFOVCrop(spatial_size, return_mask=True)
        self.contrast = GrahamContrast(alpha=graham_alpha, sigma_fraction=graham_sigma_fraction, value_range=value_range)
        self.finder = LesionCandidates(
            estimate_fovea=estimate_fovea, max_fovea_distance=max_fovea_distance, **dict(candidate_kwargs or {})
        )
        self.annotator = AnnotateCandidates(annotate, value_range=value_range)

    @staticmethod
    def out_channels(mode: str = "original", annotate: str = "draw") -> int:
        """Number of output channels: 5 for ``mode="annotated", annotate="channels"``, otherwise 3.

        Raises:
            ValueError: for an unknown mode or annotate value.
        """
        if mode not in FundusPreprocessd.MODES:
            raise ValueError(f"mode must be one of {FundusPreprocessd.MODES}, got {mode!r}")
        if annotate not in FundusPreprocessd.ANNOTATIONS:
            raise ValueError(f"annotate must be one of {FundusPreprocessd.ANNOTATIONS}, got {annotate!r}")
        return 5 if mode == "annotated" and annotate == "channels" else 3

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Preprocess every key."""
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            cropped, mask = self.crop(img)
            crop_np, mask_np = np.asarray(self._np(cropped)), np.asarray(self._np(mask))
            out = crop_np
            if self.mode in ("enhanced", "annotated"):
                out = self.contrast(crop_np, mask_np)
            if self.mode == "annotated":
                cands = self.finder(crop_np, mask_np)
                out = self.annotator(out, cands)
                if self.candidates_key is not None:
                    d[self.candidates_key], *_ = convert_to_dst_type(cands, img, dtype=np.float32)
            out = np.clip(out / self.value_range, 0.0, 1.0).astype(np.float32)
            d[key], *_ = convert_to_dst_type(out, img, dtype=np.float32)
            if self.mask_key is not None:
                d[self.mask_key] = mask
        return d

    @staticmethod
    def _np(x: NdarrayOrTensor) -> np.ndarray:
        return convert_data_type(x, np.ndarray)[0]
