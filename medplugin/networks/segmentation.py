"""A 2D U-Net for lung fields on chest radiographs, and rebuilding it from a saved ``model.json``.

Both chest X-ray bundles build the network here: ``lung_xray_segmentation`` trains it, and
``chest_xray_classification`` (``lung_crop: true``) runs it through :class:`medplugin.transforms.SegmentWithModel`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from monai.networks.nets import UNet
from torch import nn

__all__ = [
    "LUNG_UNET_ARCH",
    "LUNG_UNET_DEFAULTS",
    "LUNG_CLASS_NAMES",
    "lung_unet",
    "lung_unet_divisor",
    "lung_unet_from_meta",
]

logger = logging.getLogger(__name__)

LUNG_UNET_ARCH = "lung_unet"
"""The ``arch`` value ``model.json`` records for :func:`lung_unet`."""

LUNG_CLASS_NAMES = ("background", "lung")
"""Output channels of the lung U-Net, in order (channel 1 is both lungs together)."""

LUNG_UNET_DEFAULTS = {"features": (16, 32, 64, 128, 256), "num_res_units": 2, "dropout": 0.0, "norm": "batch"}
"""Defaults of :func:`lung_unet` (also what ``model.json`` records under ``network``)."""


def lung_unet_divisor(features: Sequence[int] = LUNG_UNET_DEFAULTS["features"]) -> int:
    """What both input sides of :func:`lung_unet` must be divisible by (``2 ** (levels - 1)``).

    Args:
        features: the network's ``features``.
    """
    return 2 ** (len(features) - 1)


def lung_unet(
    in_channels: int = 1,
    out_channels: int = 2,
    features: Sequence[int] = LUNG_UNET_DEFAULTS["features"],
    num_res_units: int = LUNG_UNET_DEFAULTS["num_res_units"],
    dropout: float = LUNG_UNET_DEFAULTS["dropout"],
    norm: str = LUNG_UNET_DEFAULTS["norm"],
) -> nn.Module:
    """Build a 2D U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", MICCAI; residual units as in Kerfoot et al. 2018) with MONAI's ``UNet``, for lung fields.

    Input ``(N, in_channels, H, W)``, output logits ``(N, out_channels, H, W)``; every level halves both
    sides, so ``H`` and ``W`` must be divisible by :func:`lung_unet_divisor` (16 with the default 5 levels).

    Args:
        in_channels: input channels (1 for a grayscale radiograph).
        out_channels: classes including background (2: background, lung).
        features: channels per level, at least two levels.
        num_res_units: residual units per level (0: plain convolutions).
        dropout: dropout probability.
        norm: ``"batch"`` or ``"instance"``.

    Raises:
        ValueError: fewer than two levels, non-positive channels, or an unknown norm.
    """
    features = [int(f) for f in features]
    if len(features) < 2 or min(features) < 1:
        raise ValueError(f"features must list at least 2 positive channel counts, got {features!r}.")
    if int(in_channels) < 1 or int(out_channels) < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}.")
    if norm not in ("instance", "batch"):
        raise ValueError(f"norm must be 'instance' or 'batch', got {norm!r}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
    return UNet(
        spatial_dims=2,
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        channels=features,
        strides=[2] * (len(features) - 1),
        num_res_units=int(num_res_units),
        dropout=float(dropout),
        norm=norm,
    )


def lung_unet_from_meta(meta: Mapping) -> nn.Module:
    """Rebuild the network a ``model.json`` describes (written by the lung segmentation bundle's training).

    Args:
        meta: the parsed ``model.json``: ``arch`` must be ``"lung_unet"``; ``in_channels``, ``class_names``
            (their count is ``out_channels``) and ``network`` (keyword arguments of :func:`lung_unet`) are used.

    Raises:
        ValueError: another ``arch``, missing keys or unknown network keys, naming them.
    """
    arch = meta.get("arch")
    if arch != LUNG_UNET_ARCH:
        raise ValueError(f"model.json describes arch {arch!r}; only {LUNG_UNET_ARCH!r} can be rebuilt here.")
    missing = [k for k in ("in_channels", "class_names", "image_size") if k not in meta]
    if missing:
        raise ValueError(f"model.json lacks {missing}; it was not written by the lung segmentation bundle.")
    kwargs = dict(meta.get("network") or {})
    unknown = set(kwargs) - set(LUNG_UNET_DEFAULTS)
    if unknown:
        raise ValueError(f"model.json network has unknown keys {sorted(unknown)}; known: {sorted(LUNG_UNET_DEFAULTS)}.")
    return lung_unet(in_channels=int(meta["in_channels"]), out_channels=len(meta["class_names"]), **kwargs)
