"""Helpers shared by the transforms: channel and mask handling, argument checks, N-d mask bounding boxes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_data_type, ensure_tuple_rep
from scipy import ndimage as ndi

from medplugin.errors import BadInputError

__all__ = [
    "POLARITIES",
    "as_rgb",
    "as_mask",
    "check_positive",
    "check_polarity",
    "default_radii",
    "normalized_blur",
    "opt_keys",
    "spatial_mask",
    "mask_bounding_box",
    "voxel_spacing",
    "number_word",
    "MaskedMapTransform",
]

POLARITIES = ("dark", "bright", "both")
"""Lesion polarities: dark spots, bright spots, or both (signed)."""


def as_rgb(img: NdarrayOrTensor, name: str = "image") -> np.ndarray:
    """Return a float32 numpy (3, H, W) copy of a channel-first RGB image.

    A 1-channel image is repeated to 3 channels (grayscale fundus photographs then behave as gray RGB);
    a 4-channel image drops its alpha channel.

    Args:
        img: (C, H, W) numpy array or torch tensor.
        name: what to call the image in error messages.

    Raises:
        BadInputError: (a ``ValueError``) for other dimensions or channel counts, naming the shape.
    """
    arr, *_ = convert_data_type(img, np.ndarray)
    if arr.ndim != 3:
        raise BadInputError(
            None, f"{name} must be channel-first (C, H, W) with C in (1, 3, 4), got shape {tuple(arr.shape)}"
        )
    c = arr.shape[0]
    if c == 1:
        arr = np.repeat(arr, 3, axis=0)
    elif c == 4:
        arr = arr[:3]
    elif c != 3:
        raise BadInputError(
            None, f"{name} must have 1 (gray), 3 (RGB) or 4 (RGBA) channels first, got shape {tuple(arr.shape)}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def as_mask(mask: NdarrayOrTensor | None, shape: tuple[int, int]) -> np.ndarray | None:
    """A 2D boolean mask of ``shape`` from ``(1, H, W)`` or ``(H, W)`` (values > 0.5 count), or ``None``."""
    if mask is None:
        return None
    m, *_ = convert_data_type(mask, np.ndarray)
    m = np.asarray(m)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != tuple(shape):
        raise ValueError(
            f"mask must have shape (1, H, W) or (H, W) = {tuple(shape)}, got shape {tuple(np.shape(mask))}"
        )
    return m > 0.5 if m.dtype != bool else m


def check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), else a ValueError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or (v < 0 if allow_zero else v <= 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def check_polarity(polarity: str) -> str:
    """``polarity`` if it is one of :data:`POLARITIES`, else a ValueError."""
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    return polarity


def default_radii(size: int) -> tuple[int, ...]:
    """Radii for lesions at a given image side: (2, 3, 4, 6, 8) px at 256 px, scaled with the side."""
    s = size / 256.0
    return tuple(sorted({max(1, int(round(r * s))) for r in (2, 3, 4, 6, 8)}))


def normalized_blur(img: np.ndarray, sigma: float, mask: np.ndarray | None) -> np.ndarray:
    """Gaussian blur of (C, H, W); inside a mask, a normalised convolution (no dark halo from outside)."""
    if mask is None:
        return ndi.gaussian_filter(img, sigma=(0, sigma, sigma), mode="reflect")
    m = mask.astype(np.float32)
    num = ndi.gaussian_filter(img * m[None], sigma=(0, sigma, sigma), mode="constant")
    den = ndi.gaussian_filter(m, sigma=sigma, mode="constant")
    return num / np.maximum(den, 1e-3)[None]


def opt_keys(value: str | Sequence[str | None] | None, n: int, name: str) -> tuple[str | None, ...]:
    """``value`` repeated to one optional key name per transformed key (dictionary transforms)."""
    out = ensure_tuple_rep(value, n)
    if any(v is not None and not isinstance(v, str) for v in out):
        raise ValueError(f"{name} must be None, a str or one str per key, got {value!r}")
    return out


def number_word(n: int) -> str:
    """``2`` -> ``"two"``, ``3`` -> ``"three"`` (error messages name the count the way a reader says it)."""
    return {1: "one", 2: "two", 3: "three", 4: "four"}.get(int(n), str(n))


def spatial_mask(mask: NdarrayOrTensor, spatial_dims: int, spatial_shape: Sequence[int] | None = None,
                 image_name: str = "image") -> np.ndarray:
    """Boolean mask of ``spatial_dims`` axes from a mask with or without channels (a voxel counts if any channel > 0).

    Args:
        mask: ``(*spatial)`` or channel-first ``(C, *spatial)``.
        spatial_dims: 2 or 3.
        spatial_shape: the image's spatial shape the mask must have, or ``None``.
        image_name: how to call the image in the error (``"image"``, ``"volume"``).

    Raises:
        ValueError: another number of axes, or a spatial shape that differs from ``spatial_shape``.
    """
    m = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if m.ndim == spatial_dims + 1:
        m = (m > 0).any(axis=0)
    elif m.ndim != spatial_dims:
        raise ValueError(f"mask must have {spatial_dims} spatial axes, with or without a leading channel axis, "
                         f"got shape {tuple(m.shape)}.")
    m = m > 0
    if spatial_shape is not None and tuple(m.shape) != tuple(int(s) for s in spatial_shape):
        raise ValueError(f"mask's spatial shape {tuple(m.shape)} differs from the {image_name}'s "
                         f"{tuple(int(s) for s in spatial_shape)}.")
    return m


def mask_bounding_box(mask: np.ndarray) -> tuple[list[int], list[int]] | None:
    """End-exclusive bounding box ``(start, end)`` of the ``True`` voxels of a boolean N-d mask, ``None`` if empty."""
    if not mask.any():
        return None
    idx = [np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))[0] for ax in range(mask.ndim)]
    return [int(i[0]) for i in idx], [int(i[-1]) + 1 for i in idx]


def voxel_spacing(img: NdarrayOrTensor, spacing: Sequence[float] | float | None = None,
                  spatial_dims: int = 3) -> np.ndarray:
    """Voxel size in mm along the last ``spatial_dims`` axes: ``spacing`` if given, else a ``MetaTensor``'s affine.

    Args:
        img: the image.
        spacing: one number or one per axis (mm), or ``None`` to read the affine.
        spatial_dims: number of spatial axes.

    Raises:
        ValueError: no ``spacing`` and ``img`` is not a ``MetaTensor`` with an affine, or bad values.
    """
    if spacing is not None:
        sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (spatial_dims,)).copy()
    elif isinstance(img, MetaTensor):
        affine = np.asarray(img.affine.detach().cpu().numpy() if torch.is_tensor(img.affine) else img.affine, float)
        sp = np.linalg.norm(affine[:spatial_dims, :spatial_dims], axis=0)
    else:
        axes = "(slice, row, col)" if spatial_dims == 3 else "(row, col)"
        raise ValueError(
            f"a margin in mm needs the voxel spacing: pass spacing={axes} mm or a MetaTensor with an affine"
        )
    if sp.shape != (spatial_dims,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be {spatial_dims} positive numbers (mm), got {sp.tolist()!r}.")
    return sp


class MaskedMapTransform(MapTransform):
    """Base of the dictionary twins that call an array transform per key, with an optional mask key per key.

    Subclasses set :attr:`transform` (the array transform, built from their keyword arguments) and override
    :meth:`apply` when the transform's result goes elsewhere than back under ``key``.

    Args:
        keys: keys to transform.
        transform: the array transform.
        mask_key: one key (or one per key) of a mask, ``None`` for none; what it means is the subclass's.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(self, keys, transform, mask_key=None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.mask_key = opt_keys(mask_key, len(self.keys), "mask_key")

    def mask(self, d: dict, mask_key: str | None):
        """The mask under ``mask_key`` (``None`` without one)."""
        return None if mask_key is None else d[mask_key]

    def apply(self, d: dict, key, mask_key: str | None) -> None:
        """Transform ``d[key]`` in place (default: with the mask as the second argument)."""
        d[key] = self.transform(d[key], self.mask(d, mask_key))

    def __call__(self, data):
        d = dict(data)
        for key, mkey in self.key_iterator(d, self.mask_key):
            self.apply(d, key, mkey)
        return d
