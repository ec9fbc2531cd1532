"""Array transforms for knee MRI volumes: loading, cropping to a region of interest, ACL-region segmentation.

Volumes are channel-first ``(C, slices, H, W)`` as elsewhere in MONAI (a ``(slices, H, W)`` array without a
channel is accepted by the crop and segmentation transforms and keeps its shape). The ACL crop follows the
two-stage approach of ACL tear classifiers that first localise the ligament and then classify a crop around it
(e.g. Liu et al. 2019, "Fully automated diagnosis of anterior cruciate ligament tears on knee MR images by
using deep learning", Radiology: AI): :class:`SegmentROI` runs the knee segmentation bundle's 3D U-Net, and
:class:`CropToMask` cuts the volume to the mask's bounding box plus a margin.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import ScaleIntensityRangePercentiles, SpatialCrop, Transform
from monai.utils import TransformBackends, convert_to_dst_type
from scipy import ndimage

from medplugin.errors import BadInputError

__all__ = [
    "CheckGeometry",
    "CropToMask",
    "SegmentROI",
    "mask_bounding_box",
    "to_file_grid",
    "voxel_spacing",
    "knee_intensity_scaler",
    "EMPTY_MASK_MODES",
]

logger = logging.getLogger(__name__)

EMPTY_MASK_MODES = ("full", "center", "raise")
"""What :class:`CropToMask` does with an empty mask: keep the whole volume, take a central box, or raise."""


# ----------------------------------------------------------------------------------------------- helpers
def voxel_spacing(img: NdarrayOrTensor, spacing: Sequence[float] | float | None = None) -> np.ndarray:
    """Voxel size in mm along the last three axes: ``spacing`` if given, else from a ``MetaTensor``'s affine.

    Args:
        img: the volume.
        spacing: a number or three numbers (mm), or ``None`` to read the affine.

    Raises:
        ValueError: no ``spacing`` and ``img`` is not a ``MetaTensor`` with an affine, or bad values.
    """
    if spacing is not None:
        sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    elif isinstance(img, MetaTensor):
        affine = np.asarray(img.affine.detach().cpu().numpy() if torch.is_tensor(img.affine) else img.affine, float)
        sp = np.linalg.norm(affine[:3, :3], axis=0)
    else:
        raise ValueError(
            "a margin in mm needs the voxel spacing: pass spacing=(slice, row, col) mm or a MetaTensor with an affine"
        )
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive numbers (mm), got {sp.tolist()!r}.")
    return sp


def _spatial_mask(mask: NdarrayOrTensor, spatial_shape: Sequence[int] | None = None) -> np.ndarray:
    """Boolean ``(slices, H, W)`` mask from a ``(S, H, W)``, ``(1, S, H, W)`` or ``(C, S, H, W)`` (any channel)."""
    m = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if m.ndim == 4:
        m = (m > 0).any(axis=0)
    elif m.ndim != 3:
        raise ValueError(f"mask must be (slices, H, W) or channel-first (C, slices, H, W), got shape {tuple(m.shape)}.")
    m = m > 0
    if spatial_shape is not None and tuple(m.shape) != tuple(spatial_shape):
        raise ValueError(f"mask's spatial shape {tuple(m.shape)} differs from the volume's {tuple(spatial_shape)}.")
    return m


def mask_bounding_box(mask: NdarrayOrTensor) -> tuple[list[int], list[int]] | None:
    """End-exclusive bounding box ``(start, end)`` of the non-zero voxels of a 3D mask, or ``None`` if empty.

    Args:
        mask: ``(slices, H, W)`` or channel-first ``(C, slices, H, W)`` (a voxel counts if any channel is > 0).
    """
    m = _spatial_mask(mask)
    if not m.any():
        return None
    idx = [np.nonzero(m.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    return [int(i[0]) for i in idx], [int(i[-1]) + 1 for i in idx]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected foreground component of an integer mask (labels > 0 count as foreground)."""
    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return np.where(labels == int(np.argmax(sizes)) + 1, mask, 0).astype(mask.dtype)


def knee_intensity_scaler(lower: float = 0.5, upper: float = 99.5) -> ScaleIntensityRangePercentiles:
    """The knee bundles' intensity normalisation: percentiles ``lower``/``upper`` of each volume to 0/1, clipped.

    MRI intensities have no absolute scale (MRNet's ``uint8``, scanner floats), so each volume is scaled by
    its own percentiles. :class:`SegmentROI` applies it with the values recorded in ``model.json``.
    """
    return ScaleIntensityRangePercentiles(lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)


def to_file_grid(volume: NdarrayOrTensor, file_axes: Sequence[int]) -> np.ndarray:
    """Put a ``(slices, H, W)`` array from :class:`LoadKneeVolume` back in its file's voxel order.

    Args:
        volume: the array (e.g. a predicted mask) in the loaded order.
        file_axes: ``meta["file_axes"]``: axis ``a`` of ``volume`` is file axis ``file_axes[a]``.
    """
    arr = volume.detach().cpu().numpy() if torch.is_tensor(volume) else np.asarray(volume)
    axes = [int(a) for a in (file_axes.tolist() if hasattr(file_axes, "tolist") else file_axes)]
    return np.ascontiguousarray(arr.transpose(np.argsort(axes)))


class CheckGeometry(Transform):
    """Check that a mask lies on its image's voxel grid: same spatial shape and (for ``MetaTensor``) affine.

    Used after loading image/mask pairs whose headers could not be compared when indexing (DICOM series).

    Args:
        affine_atol: tolerance in mm when comparing affines.

    Raises:
        BadInputError: naming the mask file (when known) and both shapes or the affine difference.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, affine_atol: float = 1e-3) -> None:
        self.affine_atol = float(affine_atol)

    def __call__(self, mask: NdarrayOrTensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return ``mask`` unchanged if it matches ``img``."""
        name = mask.meta.get("filename_or_obj") if isinstance(mask, MetaTensor) else None
        if tuple(mask.shape[-3:]) != tuple(img.shape[-3:]):
            raise BadInputError(name, f"mask shape {tuple(mask.shape[-3:])} differs from its image's {tuple(img.shape[-3:])}")
        if isinstance(mask, MetaTensor) and isinstance(img, MetaTensor):
            diff = float((mask.affine.double() - img.affine.double()).abs().max())
            if diff > self.affine_atol:
                raise BadInputError(name, f"mask affine differs from its image's by up to {diff:.4g} mm: not the same grid")
        return mask


# ----------------------------------------------------------------------------------------------- cropping
class CropToMask(Transform):
    """Crop a 3D volume to the bounding box of a mask, grown by a margin (voxels or millimetres).

    The box is the mask's end-exclusive bounding box widened by ``margin`` on each side of each spatial axis,
    grown to at least ``min_size`` around its centre, then clipped to the volume (so the crop never pads and
    always contains every mask voxel). Works on channel-first ``(C, slices, H, W)`` or ``(slices, H, W)``,
    numpy or torch; a ``MetaTensor`` gets its affine shifted to the crop (MONAI's ``SpatialCrop``), so it still
    maps voxels to the same millimetres. The last box is kept in ``self.last_box`` as
    ``{"start": [...], "end": [...]}`` (voxels of the input).

    Empty mask (nothing segmented), by ``empty``: ``"full"`` (default) returns the whole volume unchanged
    with a warning, ``"center"`` takes a box of ``min_size`` (or the whole volume) around the centre, and
    ``"raise"`` raises :class:`~medplugin.errors.BadInputError`.

    Args:
        margin: added on each side: one number for all axes or ``(slice, row, col)``.
        margin_unit: ``"voxel"`` or ``"mm"`` (mm need ``spacing`` or a ``MetaTensor`` with an affine; the
            margin in voxels is ``ceil(margin_mm / spacing)``).
        min_size: optional least box size ``(slice, row, col)`` in voxels (one number for all).
        empty: ``"full"``, ``"center"`` or ``"raise"``, as above.
        spacing: voxel size (slice, row, col) in mm for ``margin_unit="mm"``; default: the image's affine.

    Raises:
        ValueError: bad arguments, a mask whose spatial shape differs from the volume's, or an image that is
            not 3D (+ channel).
    """

    backend = SpatialCrop.backend

    def __init__(
        self,
        margin: Sequence[float] | float = 0,
        margin_unit: str = "voxel",
        min_size: Sequence[int] | int | None = None,
        empty: str = "full",
        spacing: Sequence[float] | float | None = None,
    ) -> None:
        if margin_unit not in ("voxel", "mm"):
            raise ValueError(f"margin_unit must be 'voxel' or 'mm', got {margin_unit!r}.")
        if empty not in EMPTY_MASK_MODES:
            raise ValueError(f"empty must be one of {EMPTY_MASK_MODES}, got {empty!r}.")
        m = np.broadcast_to(np.asarray(margin, dtype=np.float64), (3,)).copy() if np.size(margin) in (1, 3) else None
        if m is None or not np.all(np.isfinite(m)) or np.any(m < 0):
            raise ValueError(f"margin must be one or three numbers >= 0, got {margin!r}.")
        if min_size is not None:
            ms = np.broadcast_to(np.asarray(min_size), (3,)) if np.size(min_size) in (1, 3) else None
            if ms is None or np.any(ms < 1) or np.any(ms != np.round(ms)):
                raise ValueError(f"min_size must be one or three positive integers, got {min_size!r}.")
            self.min_size: np.ndarray | None = ms.astype(int)
        else:
            self.min_size = None
        self.margin = m
        self.margin_unit = margin_unit
        self.empty = empty
        self.spacing = spacing
        self.last_box: dict | None = None

    def margin_voxels(self, img: NdarrayOrTensor | None = None) -> np.ndarray:
        """The margin in voxels per spatial axis (mm converted with the spacing of ``img`` or ``spacing``)."""
        if self.margin_unit == "voxel":
            return np.ceil(self.margin).astype(int)
        return np.ceil(self.margin / voxel_spacing(img, self.spacing) - 1e-9).astype(int)

    def compute_box(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> dict:
        """The crop box for ``img``: ``{"start", "end", "empty"}`` in voxels (end-exclusive).

        Raises:
            BadInputError: empty mask with ``empty="raise"`` (the path is the image's file when known).
        """
        shape = np.asarray(img.shape[-3:], dtype=int)
        if img.ndim not in (3, 4):
            raise ValueError(f"image must be (slices, H, W) or (C, slices, H, W), got shape {tuple(img.shape)}.")
        m = _spatial_mask(mask, tuple(int(v) for v in shape))
        box = mask_bounding_box(m)
        if box is None:
            if self.empty == "raise":
                name = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
                raise BadInputError(name, "the ROI mask is empty: nothing to crop to")
            logger.warning("empty ROI mask: %s", "keeping the whole volume" if self.empty == "full" else "central box")
            if self.empty == "full" or self.min_size is None:
                return {"start": [0, 0, 0], "end": shape.tolist(), "empty": True}
            size = np.minimum(self.min_size, shape)
            start = (shape - size) // 2
            return {"start": start.tolist(), "end": (start + size).tolist(), "empty": True}
        margin = self.margin_voxels(img)
        start = np.asarray(box[0]) - margin
        end = np.asarray(box[1]) + margin
        if self.min_size is not None:
            grow = np.maximum(self.min_size - (end - start), 0)
            start -= grow // 2
            end += grow - grow // 2
            # shift a box that sticks out of the volume back inside, so it keeps min_size where possible
            shift = np.where(start < 0, -start, 0) - np.where(end > shape, end - shape, 0)
            start, end = start + shift, end + shift
        start, end = np.clip(start, 0, shape), np.clip(end, 0, shape)
        return {"start": start.tolist(), "end": end.tolist(), "empty": False}

    def crop(self, img: NdarrayOrTensor, box: dict) -> NdarrayOrTensor:
        """Cut ``img`` (channel-first or not) to ``box`` from :meth:`compute_box`."""
        if img.ndim == 3:
            out = SpatialCrop(roi_start=box["start"], roi_end=box["end"])(img[None])
            return out[0]
        return SpatialCrop(roi_start=box["start"], roi_end=box["end"])(img)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        """Crop ``img`` to ``mask``'s box; ``mask`` is ``(slices, H, W)`` or ``(C, slices, H, W)``."""
        box = self.compute_box(img, mask)
        self.last_box = box
        out = self.crop(img, box)
        out, *_ = convert_to_dst_type(out, img) if not isinstance(img, MetaTensor) else (out,)
        return out


# ----------------------------------------------------------------------------------------------- segmentation
class SegmentROI(Transform):
    """Segment the ACL region of a knee MRI volume with a trained 3D U-Net (the knee segmentation bundle's).

    Reads ``model.pt`` (a state dict, ``torch.load(weights_only=True)``) and ``model.json`` beside it (written
    by the bundle's training: architecture, channels, class names, intensity percentiles, patch size), applies
    the same per-volume intensity scaling as training, runs MONAI's sliding-window inference (Cicek et al. 2016
    3D U-Net; patches of the recorded ``roi_size``) and returns the argmax mask at the volume's own size:
    ``uint8`` (numpy) or ``torch.uint8`` (torch), with the input's channel layout (``(1, slices, H, W)`` for a
    channel-first input, ``(slices, H, W)`` otherwise). A ``MetaTensor`` input gives a ``MetaTensor`` with its
    meta. The network is loaded on first use (the transform pickles into DataLoader workers without it).

    Apply it to the volume at its own resolution (before any resizing): the network was trained at the
    acquisition's spacing. Because the intensity scaling maps each volume's own percentiles to [0, 1], an input
    that was already linearly rescaled (e.g. to [0, 1]) gives the same mask as the raw one.

    Args:
        model_path: the bundle's ``models/model.pt``; ``model.json`` must sit beside it.
        device: where to run the network.
        overlap: sliding-window overlap in [0, 1).
        sw_batch_size: patches per forward pass.
        roi_size: patch size ``(slices, H, W)``; default the one in ``model.json``.
        keep_largest: keep only the largest connected component of the foreground (drops stray voxels).

    Raises:
        BadInputError: missing ``model.pt``/``model.json``, unsafe or mismatched weights (on first call).
        ValueError: bad arguments, or an input that is not 3D (+ one channel).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        overlap: float = 0.25,
        sw_batch_size: int = 2,
        roi_size: Sequence[int] | None = None,
        keep_largest: bool = True,
    ) -> None:
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}.")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size!r}.")
        if roi_size is not None and (len(roi_size) != 3 or min(roi_size) < 1):
            raise ValueError(f"roi_size must be three positive sizes (slices, H, W), got {roi_size!r}.")
        self.model_path = str(model_path)
        self.device = torch.device(device)
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.roi_size = None if roi_size is None else [int(v) for v in roi_size]
        self.keep_largest = keep_largest
        self._network: torch.nn.Module | None = None
        self.meta: dict | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_network"] = None  # workers load their own copy
        return state

    def load(self) -> torch.nn.Module:
        """Load (once) and return the network in eval mode."""
        if self._network is not None:
            return self._network
        from medplugin.networks.pretrained import load_trained_model
        from medplugin.networks.unet3d import unet3d_from_meta

        network, meta = load_trained_model(self.model_path, unet3d_from_meta, "segmentation", "knee_mri_segmentation")
        self.meta = meta
        self._network = network.to(self.device).eval()
        return self._network

    def _roi(self) -> list[int]:
        roi = self.roi_size or (self.meta or {}).get("roi_size")
        if roi is None:
            raise BadInputError(self.model_path, "model.json has no roi_size; pass roi_size=(slices, H, W)")
        return [int(v) for v in roi]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return the ACL-region mask of ``img`` (``(slices, H, W)`` or ``(1, slices, H, W)``)."""
        if img.ndim not in (3, 4) or (img.ndim == 4 and img.shape[0] != 1):
            raise ValueError(
                f"image must be (slices, H, W) or single-channel (1, slices, H, W), got shape {tuple(img.shape)}."
            )
        network = self.load()
        x = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img, dtype=torch.float32)
        x = x.detach().cpu() if x.ndim == 4 else x.detach().cpu()[None]
        lo, hi = (self.meta or {}).get("intensity_percentiles", (0.5, 99.5))
        x = knee_intensity_scaler(lo, hi)(x)
        x = torch.as_tensor(x, dtype=torch.float32)[None].to(self.device)  # (1, 1, S, H, W)
        with torch.no_grad():
            logits = sliding_window_inference(
                x, self._roi(), self.sw_batch_size, network, overlap=self.overlap, mode="gaussian"
            )
        mask = logits.argmax(1)[0].to(torch.uint8).cpu()  # (S, H, W)
        if self.keep_largest and mask.any():
            mask = torch.as_tensor(_largest_component(mask.numpy()))
        if img.ndim == 4:
            mask = mask[None]
        if isinstance(img, MetaTensor):
            return MetaTensor(mask, meta={**img.meta, "affine": img.affine.clone()})
        out, *_ = convert_to_dst_type(mask, img, dtype=torch.uint8 if torch.is_tensor(img) else np.uint8)
        return out
