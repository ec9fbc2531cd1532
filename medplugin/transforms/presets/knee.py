"""The knee MRI classifier's preprocessing and augmentation, defined once for every config of the bundle.

MRNet (Bien et al. 2018, PLOS Medicine) fed each exam at its own slice count with batch size 1; here the slice
count can be made fixed (``num_slices``: the central slices are kept, or black slices padded on both sides,
so exams batch together) or left as is (``num_slices=None``: use batch size 1). Every spatial step is one of
MONAI's invertible transforms (ACL-region crop, in-plane resize, slice crop or pad), so MONAI's ``Invertd`` with
this ``Compose`` puts a class activation map computed on the network input back on the loaded volume's voxel
grid: zero outside the ROI box and on the slices the network did not see.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    DeleteItemsd,
    EnsureTyped,
    NormalizeIntensityd,
    RandAffined,
    RandShiftIntensityd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
)

from medplugin.transforms.crop.dictionary import CropToMaskd
from medplugin.transforms.io.dictionary import LoadKneeVolumed
from medplugin.transforms.segment.dictionary import SegmentWithModeld

__all__ = ["knee_classification_preprocessing", "knee_classification_augmentation"]


def knee_classification_preprocessing(
    image_size: int = 256,
    num_slices: int | None = 32,
    mean: float = 0.449,
    std: float = 0.226,
    roi_crop: bool = False,
    roi_model_path: str | None = None,
    roi_margin_mm: float = 10.0,
    roi_device: str | torch.device = "cpu",
    npy_spacing: Sequence[float] = (1.0, 1.0, 1.0),
    lower: float = 0.5,
    upper: float = 99.5,
) -> Compose:
    """The knee classification bundle's deterministic preprocessing (train, evaluate and inference share it).

    Load (NIfTI, DICOM series folder or MRNet ``.npy``, slices first in sagittal order, the path kept under
    ``path``); optionally segment the ACL region with the segmentation bundle's 3D U-Net and crop to it with a
    margin in mm (``roi_crop``; :class:`~medplugin.transforms.SegmentWithModeld`,
    :class:`~medplugin.transforms.CropToMaskd`); scale intensities so the ``lower``/``upper`` percentiles of each
    volume map to 0/1 (clipped: MRI has no absolute scale); resize in-plane to ``image_size`` x ``image_size``
    (trilinear with the slice count kept, anti-aliased when shrinking); make the slice count ``num_slices``
    (central crop, or zero padding on both sides; ``None`` keeps it); then ``(x - mean) / std``. The output
    ``image`` is a ``MetaTensor`` ``(1, n, image_size, image_size)`` float32 that records its spatial steps.

    Args:
        image_size: in-plane size.
        num_slices: fixed slice count, or ``None`` (batch size 1).
        mean: subtracted after scaling to [0, 1].
        std: divisor after subtracting ``mean``.
        roi_crop: segment and crop to the ACL region first.
        roi_model_path: the segmentation bundle's ``model.pt`` (with ``model.json``), for ``roi_crop``.
        roi_margin_mm: margin around the segmented region, in mm.
        roi_device: where the segmentation network runs.
        npy_spacing: voxel size assumed for MRNet ``.npy`` exams (they carry none).
        lower: lower intensity percentile.
        upper: upper intensity percentile.

    Raises:
        ValueError: bad sizes or normalisation, or ``roi_crop`` without ``roi_model_path``.
    """
    if int(image_size) < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size!r}.")
    if num_slices is not None and int(num_slices) < 1:
        raise ValueError(f"num_slices must be >= 1 or None, got {num_slices!r}.")
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std!r}.")
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower!r}, upper={upper!r}.")
    steps: list = [LoadKneeVolumed(keys="image", channel_first=True, npy_spacing=npy_spacing, path_key="path")]
    if roi_crop:
        if not roi_model_path:
            raise ValueError("roi_crop needs roi_model_path: the knee_mri_segmentation bundle's models/model.pt.")
        steps += [
            SegmentWithModeld(keys="image", model_path=roi_model_path, mask_key="roi_mask", device=roi_device,
                              keep_components=1, fill_holes=False, model_name="ACL-region segmentation"),
            CropToMaskd(keys="image", mask_key="roi_mask", margin=roi_margin_mm, margin_unit="mm", box_key=None),
            DeleteItemsd(keys="roi_mask"),
        ]
    steps += [
        ScaleIntensityRangePercentilesd("image", lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True),
        Resized("image", spatial_size=(-1, int(image_size), int(image_size)), mode="trilinear", anti_aliasing=True),
    ]
    if num_slices is not None:
        steps.append(ResizeWithPadOrCropd("image", spatial_size=(int(num_slices), -1, -1)))
    steps += [
        NormalizeIntensityd("image", subtrahend=float(mean), divisor=float(std)),
        EnsureTyped("image", dtype=torch.float32),
    ]
    return Compose(steps)


def knee_classification_augmentation(
    rotate_degrees: float = 10.0, intensity: float = 0.1, prob: float = 0.5
) -> Compose:
    """Training augmentation on the prepared ``(1, slices, H, W)`` volume: small in-plane rotation and scaling,
    intensity shift; plain tensors out (training needs no record of the steps). No flips: the ligament's
    orientation is part of the anatomy.

    Args:
        rotate_degrees: largest in-plane rotation.
        intensity: largest intensity offset (in normalised units).
        prob: probability of each augmentation.
    """
    rad = float(np.deg2rad(rotate_degrees))
    return Compose([
        RandAffined(keys="image", prob=prob, rotate_range=(rad, 0.0, 0.0), scale_range=(0.0, 0.08, 0.08),
                    mode="bilinear", padding_mode="border"),
        RandShiftIntensityd(keys="image", offsets=intensity, prob=prob),
        EnsureTyped("image", track_meta=False),
    ])
