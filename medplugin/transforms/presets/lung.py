"""The lung segmentation bundle's preprocessing and augmentation, defined once for every config.

:class:`medplugin.transforms.SegmentWithModel` applies the same image steps to a whole-image model's input
(resize with :data:`~medplugin.transforms.RESIZE_2D`, then :func:`medplugin.transforms.normalize_radiograph`).
"""

from __future__ import annotations

import math

from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureTyped,
    NormalizeIntensityd,
    RandAffined,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
)

from medplugin.transforms.intensity.array import NORMALIZATIONS
from medplugin.transforms.io import LoadImage2dd
from medplugin.transforms.labels.dictionary import LoadLungMaskd
from medplugin.transforms.segment.array import RESIZE_2D

__all__ = ["lung_segmentation_preprocessing", "lung_segmentation_augmentation"]


def lung_segmentation_preprocessing(image_size: int = 256, normalization: str = "zscore",
                                    track_meta: bool = False) -> Compose:
    """Deterministic preprocessing of the lung U-Net: load image (and mask) -> resize -> normalise.

    ``image`` (a file path) is loaded as one gray channel on 0..255 (DICOM with its VOI LUT, MONOCHROME1
    inverted; RGB(A) to luma), its path kept under ``path``; ``label`` (a mask path or a list of paths to
    merge, optional so that inference data without masks passes) is loaded as 0/1 and must have the image's
    size. Both are resized to ``image_size`` x ``image_size`` (the whole radiograph, aspect not kept; the mask
    bilinearly, then thresholded at 0.5), and the image is standardised per image. Outputs are ``image``
    ``(1, S, S)`` float32 and ``label`` ``(1, S, S)`` float32 of 0/1: plain tensors, or with ``track_meta``
    ``MetaTensor`` s that record the resize, so that MONAI's ``Invertd`` (with this ``Compose``) puts a mask
    predicted at ``S`` x ``S`` back on the image's own pixel grid (batch inference, MONAI Label).

    Args:
        image_size: square network input size, divisible by :func:`medplugin.networks.segmentation.lung_unet_divisor`.
        normalization: ``"zscore"``.
        track_meta: keep ``MetaTensor`` s and their record of the resize (for ``Invertd``).

    Raises:
        ValueError: a too small ``image_size`` or an unknown normalisation.
    """
    if int(image_size) < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size!r}.")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    size = (int(image_size), int(image_size))
    return Compose([
        LoadImage2dd("image", channels=1, path_key="path"),
        LoadLungMaskd("label", reference_key="image", allow_missing_keys=True),
        Resized("image", spatial_size=size, **RESIZE_2D),
        Resized("label", spatial_size=size, **RESIZE_2D, allow_missing_keys=True),
        AsDiscreted("label", threshold=0.5, allow_missing_keys=True),
        NormalizeIntensityd("image"),
        EnsureTyped(["image", "label"], track_meta=bool(track_meta), allow_missing_keys=True),
    ])


def lung_segmentation_augmentation(
    rotate_degrees: float = 10.0,
    zoom: float = 0.1,
    intensity: float = 0.1,
    prob: float = 0.5,
) -> Compose:
    """Random augmentation for training, after :func:`lung_segmentation_preprocessing`.

    One affine transform (rotation and zoom) is drawn per sample and applied to the image (bilinear) and the
    mask (nearest) alike; then the image's intensities are scaled and shifted. No flips: the left and right
    lungs differ (the heart lies on the patient's left).

    Args:
        rotate_degrees: rotations uniformly in +-this many degrees.
        zoom: zoom factors uniformly in ``1 +- zoom`` (per axis).
        intensity: random intensity scale and shift by up to this much (the image is standardised).
        prob: probability of each random step.

    Raises:
        ValueError: values out of range.
    """
    if not 0 <= zoom < 1:
        raise ValueError(f"zoom must be in [0, 1), got {zoom!r}.")
    if not 0 <= prob <= 1:
        raise ValueError(f"prob must be in [0, 1], got {prob!r}.")
    return Compose([
        RandAffined(
            ["image", "label"],
            prob=prob,
            rotate_range=math.radians(float(rotate_degrees)),
            scale_range=(float(zoom), float(zoom)),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandScaleIntensityd("image", factors=float(intensity), prob=prob),
        RandShiftIntensityd("image", offsets=float(intensity), prob=prob),
        EnsureTyped(["image", "label"], track_meta=False),
    ])
