"""Dictionary transforms for fundus lesion candidates, and the whole fundus preprocessing :class:`FundusPreprocessd`.

Each ``Food`` wraps ``Foo``; see :mod:`medplugin.transforms.lesion.array` and
:mod:`medplugin.transforms.intensity.array` for the methods and the papers they come from.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

from medplugin.transforms.crop.array import FundusFOVCrop
from medplugin.transforms.intensity.array import GrahamContrast
from medplugin.transforms.lesion.array import AnnotateCandidates, LesionCandidates
from medplugin.transforms.utils import MaskedMapTransform, opt_keys

__all__ = [
    "LesionCandidatesd",
    "LesionCandidatesD",
    "LesionCandidatesDict",
    "AnnotateCandidatesd",
    "AnnotateCandidatesD",
    "AnnotateCandidatesDict",
    "FundusPreprocessd",
    "FundusPreprocessD",
    "FundusPreprocessDict",
]


class LesionCandidatesd(MaskedMapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.lesion.array.LesionCandidates`.

    Stores the (N, 5) candidates ``[row, col, radius, polarity, score]`` under ``candidates_key``. Variable-N
    arrays do not collate into batches: drop the key (or use ``AnnotateCandidatesd``) before a DataLoader.

    Args:
        keys: image keys.
        candidates_key: where to store the candidates (one name or one per key).
        mask_key: key of the FOV mask; ``None``: non-black pixels.
        fovea_key: key holding the fovea (row, col); enables the fovea filter; ``None``: argument/estimate.
        disc_key: key holding the optic disc centre (row, col); ``None``: not used unless estimated.
        allow_missing_keys: skip missing keys instead of raising.
        kwargs: the arguments of ``LesionCandidates`` (radii, alpha, beta, q, min_distance, max_fovea_distance,
            disc_diameter, estimate_fovea, polarity, channel, max_candidates).
    """

    backend = LesionCandidates.backend

    def __init__(self, keys: KeysCollection, candidates_key: str | Sequence[str] = "candidates",
                 mask_key: str | None = None, fovea_key: str | None = None, disc_key: str | None = None,
                 allow_missing_keys: bool = False, **kwargs: Any) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, LesionCandidates(**kwargs), mask_key, allow_missing_keys)
        outs = opt_keys(candidates_key, len(self.keys), "candidates_key")
        if any(c is None for c in outs):
            raise ValueError(f"candidates_key must name a key, got {candidates_key!r}")
        self.candidates_key = dict(zip(self.keys, outs))
        self.fovea_key, self.disc_key = fovea_key, disc_key

    def apply(self, d: dict, key, mask_key: str | None) -> None:
        """Store the candidates of ``d[key]``."""
        fovea = d.get(self.fovea_key) if self.fovea_key is not None else None
        disc = d.get(self.disc_key) if self.disc_key is not None else None
        d[self.candidates_key[key]] = self.transform(d[key], self.mask(d, mask_key), fovea=fovea, disc=disc)


class AnnotateCandidatesd(MaskedMapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.lesion.array.AnnotateCandidates`.

    Args:
        keys: image keys (annotated in place).
        candidates_key: key of the (N, 5) candidates (one or one per key).
        allow_missing_keys: skip missing keys instead of raising.
        kwargs: the arguments of ``AnnotateCandidates`` (mode, dark_color, bright_color, thickness, value_range).
    """

    backend = AnnotateCandidates.backend

    def __init__(self, keys: KeysCollection, candidates_key: str | Sequence[str] = "candidates",
                 allow_missing_keys: bool = False, **kwargs: Any) -> None:
        """Check and store the arguments (see the class docstring): the candidates take the mask's place."""
        super().__init__(keys, AnnotateCandidates(**kwargs), candidates_key, allow_missing_keys)


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
        self.contrast = GrahamContrast(
            alpha=graham_alpha, sigma_fraction=graham_sigma_fraction, value_range=value_range
        )
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


LesionCandidatesD = LesionCandidatesDict = LesionCandidatesd
AnnotateCandidatesD = AnnotateCandidatesDict = AnnotateCandidatesd
FundusPreprocessD = FundusPreprocessDict = FundusPreprocessd
