"""2D image classification (retinal OCT): deterministic preprocessing with the uint8 cache boundary, augmentation."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import (
    Compose,
    CopyItemsd,
    EnsureTyped,
    NormalizeIntensityd,
    RandFlipd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
    Resized,
    ScaleIntensityRanged,
)

from medplugin.transforms.calibration import Temperatured
from medplugin.transforms.fast import CacheBoundary, ToUint8d
from medplugin.transforms.io import LoadImage2dd

__all__ = ["image_classification_preprocessing", "image_classification_augmentation", "calibrated_postprocessing"]


def image_classification_preprocessing(
    image_size: int,
    channels: int = 1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    keys: Sequence[str] = ("image",),
    uint8: bool = True,
) -> Compose:
    """Deterministic preprocessing of a 2D classifier: load -> resize -> uint8 -> [0, 1] -> normalise.

    Training, validation, evaluation and inference all call this one function with the same top-level
    config values, so an image is never preprocessed one way in training and another in deployment.

    Args:
        image_size: square output size (the whole image is resized, aspect not kept, as in the papers).
        channels: 1 (grayscale) or 3 (RGB).
        mean: per-channel mean on the [0, 1] scale (e.g. from ``medplugin.networks.input_normalization``).
        std: per-channel std; both or neither.
        keys: image keys.
        uint8: round the resized image to ``uint8`` (at most half a grey level) and mark that point with
            :class:`medplugin.transforms.CacheBoundary`, so ``medplugin.data.cache.build_dataset`` keeps
            decoded images as ``uint8`` (a quarter of ``float32``'s memory) and a cached run gives exactly the
            numbers of an uncached one. ``False``: resize on the float image, no rounding, no boundary.
    """
    if int(image_size) < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size!r}.")
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}.")
    keys = list(keys)
    resize = Resized(keys, spatial_size=(int(image_size), int(image_size)), mode="bilinear", anti_aliasing=True)
    scale = ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)
    steps = [LoadImage2dd(keys, channels=channels, path_key="path")]
    if uint8:  # decode -> resize -> uint8 is what a cache keeps; the rest runs on every access
        steps += [resize, ToUint8d(keys), CacheBoundary(), scale]
    else:
        steps += [scale, resize]
    if mean is not None:
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} value(s), got mean={list(mean)}, std={list(std)}.")
        steps.append(NormalizeIntensityd(keys, subtrahend=list(mean), divisor=list(std), channel_wise=True))
    steps.append(EnsureTyped(keys, track_meta=False))
    return Compose(steps)


def image_classification_augmentation(
    rotate_degrees: float = 10.0,
    hflip: bool = True,
    vflip: bool = False,
    zoom: tuple[float, float] = (0.9, 1.1),
    intensity: float = 0.1,
    prob: float = 0.5,
    keys: Sequence[str] = ("image",),
) -> Compose:
    """Random augmentation applied after :func:`image_classification_preprocessing` in training only.

    Args:
        rotate_degrees: rotations uniformly in +-this many degrees.
        hflip: random left-right flips.
        vflip: random up-down flips (off for OCT, where up is the vitreous).
        zoom: zoom range.
        intensity: random scale and shift of intensities by up to this fraction.
        prob: probability of each random step.
        keys: image keys.
    """
    if not 0 <= prob <= 1:
        raise ValueError(f"prob must be in [0, 1], got {prob!r}.")
    keys = list(keys)
    steps = []
    if rotate_degrees:
        r = math.radians(float(rotate_degrees))
        steps.append(RandRotated(keys, range_x=r, prob=prob, padding_mode="zeros"))
    if hflip:
        steps.append(RandFlipd(keys, prob=prob, spatial_axis=1))
    if vflip:
        steps.append(RandFlipd(keys, prob=prob, spatial_axis=0))
    if zoom and tuple(zoom) != (1.0, 1.0):
        steps.append(RandZoomd(keys, prob=prob, min_zoom=zoom[0], max_zoom=zoom[1], keep_size=True))
    if intensity:
        steps.append(RandScaleIntensityd(keys, factors=float(intensity), prob=prob))
        steps.append(RandShiftIntensityd(keys, offsets=float(intensity), prob=prob))
    steps.append(EnsureTyped(keys, track_meta=False))
    return Compose(steps)


def calibrated_postprocessing(activation, model_json: str, key: str = "pred", logits_key: str | None = "logits"):
    """A classifier's post-processing with its stored temperature: logits / T, then ``activation``.

    Every evaluation overlay uses it, so that the figures are those of the calibrated probabilities that inference
    writes. With ``logits_key`` the raw logits are kept under that key first (the report's calibration error
    before temperature scaling reads them).

    Args:
        activation: the bundle's own post-processing (its softmax or sigmoid), applied after the temperature.
        model_json: the trained model's ``model.json`` (its ``temperature``; none stored means T = 1).
        key: key of the logits.
        logits_key: where to keep the raw logits; ``None`` keeps none.
    """
    keep = [CopyItemsd(key, names=logits_key)] if logits_key else []
    return Compose([*keep, Temperatured(key, model_json=model_json), activation])
