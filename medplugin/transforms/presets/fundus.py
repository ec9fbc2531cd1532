"""The fundus DR bundle's preprocessing, augmentation and normalisation, each defined once.

Training composes them as ``preprocessing -> augmentation -> normalisation`` (augmenting on the [0, 1]
image, so rotations and shifts pad with the black of the masked background); validation, evaluation and
inference use ``preprocessing -> normalisation``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import (
    Compose,
    EnsureTyped,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from medplugin.transforms.io import LoadImage2dd
from medplugin.transforms.lesion.dictionary import FundusPreprocessd

__all__ = ["fundus_classification_preprocessing", "fundus_normalization", "fundus_augmentation"]


def fundus_classification_preprocessing(
    image_size: int = 512,
    mode: str = "enhanced",
    annotate: str = "draw",
    keys: Sequence[str] = ("image",),
    **kwargs,
) -> Compose:
    """Load a colour fundus photograph and run :class:`FundusPreprocessd`: float32 in [0, 1].

    Input colour: RGB is used as is; a grayscale image is repeated to three channels and an RGBA image drops
    its alpha channel (the loader's documented conversion), so any JPEG/PNG runs; a model trained on colour
    photographs has not learnt gray ones, so such predictions deserve little trust. Output channels:
    ``FundusPreprocessd.out_channels(mode, annotate)``.

    Args:
        image_size: output side in pixels (the FOV circle is cropped and resized keeping its aspect).
        mode: ``"original"``, ``"enhanced"`` (Graham contrast) or ``"annotated"`` (enhanced + lesion candidates).
        annotate: ``"draw"`` (candidates drawn, 3 channels) or ``"channels"`` (2 extra candidate maps).
        keys: image keys.
        kwargs: further :class:`FundusPreprocessd` arguments (e.g. ``candidate_kwargs``).
    """
    keys = list(keys)
    return Compose([
        LoadImage2dd(keys, channels=3, path_key="path"),
        FundusPreprocessd(keys, mode=mode, spatial_size=int(image_size), annotate=annotate, **kwargs),
        EnsureTyped(keys, track_meta=False),
    ])


def fundus_normalization(mean: Sequence[float], std: Sequence[float], keys: Sequence[str] = ("image",)) -> Compose:
    """Channel-wise ``(x - mean) / std`` on [0, 1] images (e.g. ``medplugin.networks.input_normalization``)."""
    if len(mean) != len(std):
        raise ValueError(f"mean and std need the same length, got mean={list(mean)}, std={list(std)}.")
    keys = list(keys)
    return Compose([
        NormalizeIntensityd(keys, subtrahend=list(mean), divisor=list(std), channel_wise=True),
        EnsureTyped(keys, track_meta=False),
    ])


def fundus_augmentation(
    image_size: int,
    rotate_degrees: float = 45.0,
    hflip: bool = True,
    vflip: bool = True,
    shift: float = 0.1,
    color_jitter: float = 0.1,
    prob: float = 0.5,
    keys: Sequence[str] = ("image",),
) -> Compose:
    """Training augmentation of the Kaggle DR write-ups: rotation, flips, shifts, plus mild colour jitter.

    Args:
        image_size: the preprocessed image side (shifts are a fraction of it).
        rotate_degrees: rotations uniformly in +-this many degrees (45 by default).
        hflip: random left-right flips (a left eye then looks like a right eye, which is fine for grading).
        vflip: random up-down flips.
        shift: horizontal and vertical shifts up to this fraction of the side.
        color_jitter: per-channel random scale (brightness/colour balance) up to this fraction, a shift of
            half of it, and a gamma in ``1 +- color_jitter`` (contrast). Extra candidate channels are jittered too.
        prob: probability of each random step.
        keys: image keys.
    """
    if not 0 <= prob <= 1:
        raise ValueError(f"prob must be in [0, 1], got {prob!r}.")
    if not 0 <= shift < 0.5:
        raise ValueError(f"shift must be in [0, 0.5), got {shift!r}.")
    keys = list(keys)
    steps = []
    if rotate_degrees or shift:
        px = float(shift) * int(image_size)
        steps.append(RandAffined(keys, prob=prob, rotate_range=math.radians(float(rotate_degrees)),
                                 translate_range=(px, px), padding_mode="zeros", mode="bilinear"))
    if hflip:
        steps.append(RandFlipd(keys, prob=prob, spatial_axis=1))
    if vflip:
        steps.append(RandFlipd(keys, prob=prob, spatial_axis=0))
    if color_jitter:
        j = float(color_jitter)
        steps.append(RandScaleIntensityd(keys, factors=j, prob=prob, channel_wise=True))
        steps.append(RandShiftIntensityd(keys, offsets=j / 2, prob=prob, channel_wise=True))
        steps.append(RandAdjustContrastd(keys, prob=prob, gamma=(1 - j, 1 + j)))
    steps.append(EnsureTyped(keys, track_meta=False))
    return Compose(steps)
