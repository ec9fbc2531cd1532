"""A small 3D U-Net for knee MRI ACL-region segmentation, and rebuilding it from a saved ``model.json``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from monai.networks.nets import UNet
from torch import nn

__all__ = ["knee_unet3d", "unet3d_from_meta", "KNEE_UNET3D_DEFAULTS", "unet3d_divisor"]

logger = logging.getLogger(__name__)

KNEE_UNET3D_DEFAULTS = {"features": (16, 32, 64, 128), "num_res_units": 1, "dropout": 0.0, "norm": "instance"}
"""Defaults of :func:`knee_unet3d` (also what ``model.json`` records under ``network``)."""


def _strides(n_levels: int) -> list[tuple[int, int, int]]:
    # MRI knee exams have thick slices (3 mm vs 0.3-0.6 mm in plane): the first level keeps the slice axis
    return [(1, 2, 2)] + [(2, 2, 2)] * (n_levels - 2)


def unet3d_divisor(features: Sequence[int] = KNEE_UNET3D_DEFAULTS["features"]) -> tuple[int, int, int]:
    """What every ``(slices, H, W)`` input side of :func:`knee_unet3d` must be divisible by (patch sizes).

    Args:
        features: the network's ``features``.
    """
    n_down = len(features) - 1
    return (2 ** max(n_down - 1, 0), 2**n_down, 2**n_down)


def knee_unet3d(
    in_channels: int = 1,
    out_channels: int = 2,
    features: Sequence[int] = KNEE_UNET3D_DEFAULTS["features"],
    num_res_units: int = KNEE_UNET3D_DEFAULTS["num_res_units"],
    dropout: float = KNEE_UNET3D_DEFAULTS["dropout"],
    norm: str = KNEE_UNET3D_DEFAULTS["norm"],
) -> nn.Module:
    """Build a 3D U-Net (Cicek et al. 2016, "3D U-Net: Learning Dense Volumetric Segmentation from Sparse
    Annotation", MICCAI; residual units as in Kerfoot et al. 2018) with MONAI's ``UNet``, for sagittal knee MRI.

    Input ``(N, in_channels, slices, H, W)``, output logits ``(N, out_channels, slices, H, W)``. The first
    downsampling keeps the slice axis (stride ``(1, 2, 2)``) because knee MRI slices are several times thicker
    than the in-plane pixels; the others halve every axis. Input sides must be divisible by
    :func:`unet3d_divisor` (sliding-window inference with such a patch size takes care of it).

    Args:
        in_channels: input channels (1 for one MRI sequence).
        out_channels: classes including background (2: background, ACL region).
        features: channels per level, at least two levels.
        num_res_units: residual units per level (0: plain convolutions).
        dropout: dropout probability.
        norm: ``"instance"`` or ``"batch"``.

    Raises:
        ValueError: fewer than two levels, non-positive channels, or an unknown norm.
    """
    features = [int(f) for f in features]
    if len(features) < 2 or min(features) < 1:
        raise ValueError(f"features must list at least 2 positive channel counts, got {features!r}.")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}.")
    if norm not in ("instance", "batch"):
        raise ValueError(f"norm must be 'instance' or 'batch', got {norm!r}.")
    return UNet(
        spatial_dims=3,
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        channels=features,
        strides=_strides(len(features)),
        num_res_units=int(num_res_units),
        dropout=float(dropout),
        norm=norm,
    )


def unet3d_from_meta(meta: Mapping) -> nn.Module:
    """Rebuild the network a ``model.json`` describes (written by the knee segmentation bundle's training).

    Args:
        meta: the parsed ``model.json``: ``arch`` must be ``"knee_unet3d"``; ``in_channels``, ``class_names``
            (their count is ``out_channels``) and ``network`` (the keyword arguments of :func:`knee_unet3d`)
            are used.

    Raises:
        ValueError: another ``arch`` or missing keys, naming them.
    """
    arch = meta.get("arch")
    if arch != "knee_unet3d":
        raise ValueError(f"model.json describes arch {arch!r}; only 'knee_unet3d' can be rebuilt here.")
    missing = [k for k in ("in_channels", "class_names") if k not in meta]
    if missing:
        raise ValueError(f"model.json lacks {missing}; it was not written by the knee segmentation bundle.")
    kwargs = dict(meta.get("network") or {})
    unknown = set(kwargs) - set(KNEE_UNET3D_DEFAULTS)
    if unknown:
        raise ValueError(
            f"model.json network has unknown keys {sorted(unknown)}; known: {sorted(KNEE_UNET3D_DEFAULTS)}."
        )
    return knee_unet3d(in_channels=int(meta["in_channels"]), out_channels=len(meta["class_names"]), **kwargs)
