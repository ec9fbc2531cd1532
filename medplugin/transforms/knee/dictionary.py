"""Dictionary transforms for knee MRI volumes: load, crop to a region of interest, segment the ACL region."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medplugin.transforms.knee.array import CheckGeometry, CropToMask, SegmentROI, voxel_spacing

__all__ = [
    "CheckGeometryd",
    "CheckGeometryD",
    "CheckGeometryDict",
    "CropToMaskd",
    "CropToMaskD",
    "CropToMaskDict",
    "SegmentROId",
    "SegmentROID",
    "SegmentROIDict",
]


class CheckGeometryd(MapTransform):
    """Dictionary wrapper of :class:`CheckGeometry`: every key must lie on the grid of ``reference_key``.

    Args:
        keys: mask keys to check (e.g. ``label``).
        reference_key: the image key.
        affine_atol: tolerance in mm when comparing affines.
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = CheckGeometry.backend

    def __init__(
        self, keys: KeysCollection, reference_key: str = "image", affine_atol: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        self.checker = CheckGeometry(affine_atol)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.checker(d[key], d[self.reference_key])
        return d


class CropToMaskd(MapTransform):
    """Dictionary wrapper of :class:`CropToMask`: crop every key to the box of ``data[mask_key]``.

    All ``keys`` get the same box (e.g. the image and its label); the mask itself is cropped only if it is
    one of ``keys``. The box is stored under ``box_key`` as ``{"start", "end", "empty"}`` in input voxels, plus
    ``"start_mm"``/``"end_mm"`` (box corners in RAS mm) when the first key is a ``MetaTensor``.

    Args:
        keys: keys to crop.
        mask_key: key of the mask (``(slices, H, W)`` or ``(C, slices, H, W)``).
        margin: margin on each side, one number or ``(slice, row, col)``.
        margin_unit: ``"voxel"`` or ``"mm"``.
        min_size: least box size in voxels.
        empty: empty-mask behaviour: ``"full"`` (whole volume, default), ``"center"`` or ``"raise"``.
        spacing: voxel size in mm for mm margins; default from the first key's affine.
        box_key: where to store the box (``None``: not stored).
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = CropToMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "roi_mask",
        margin: Sequence[float] | float = 0,
        margin_unit: str = "voxel",
        min_size: Sequence[int] | int | None = None,
        empty: str = "full",
        spacing: Sequence[float] | float | None = None,
        box_key: str | None = "roi_box",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.box_key = box_key
        self.cropper = CropToMask(margin=margin, margin_unit=margin_unit, min_size=min_size, empty=empty, spacing=spacing)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if self.mask_key not in d:
            raise KeyError(f"mask key {self.mask_key!r} not in the data (keys: {sorted(map(str, d))}).")
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        first = d[keys[0]]
        box = self.cropper.compute_box(first, d[self.mask_key])
        box = dict(box)
        if isinstance(first, MetaTensor):
            affine = first.affine.detach().cpu().numpy().astype(np.float64)
            corners = np.array([box["start"], np.asarray(box["end"]) - 1], dtype=np.float64)
            mm = (affine[:3, :3] @ corners.T).T + affine[:3, 3]
            box["start_mm"], box["end_mm"] = mm[0].round(3).tolist(), mm[1].round(3).tolist()
            box["spacing_mm"] = voxel_spacing(first).round(4).tolist()
        for key in keys:
            d[key] = self.cropper.crop(d[key], box)
        self.cropper.last_box = box
        if self.box_key is not None:
            d[self.box_key] = box
        return d


class SegmentROId(MapTransform):
    """Dictionary wrapper of :class:`SegmentROI`: segments ``data[key]`` and stores the mask under ``mask_key``.

    Args:
        keys: the image key (one key; the first is used).
        model_path: the segmentation bundle's ``model.pt`` (``model.json`` beside it).
        mask_key: where to store the mask (same layout as the image).
        device: where to run the network.
        overlap: sliding-window overlap.
        sw_batch_size: patches per forward pass.
        roi_size: patch size, default from ``model.json``.
        keep_largest: keep the largest connected component only.
        allow_missing_keys: do not raise if the key is absent.
    """

    backend = SegmentROI.backend

    def __init__(
        self,
        keys: KeysCollection,
        model_path: str | os.PathLike,
        mask_key: str = "roi_mask",
        device: str | torch.device = "cpu",
        overlap: float = 0.25,
        sw_batch_size: int = 2,
        roi_size: Sequence[int] | None = None,
        keep_largest: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.segmenter = SegmentROI(
            model_path, device=device, overlap=overlap, sw_batch_size=sw_batch_size, roi_size=roi_size,
            keep_largest=keep_largest,
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = self.segmenter(d[key])
            break
        return d


CheckGeometryD = CheckGeometryDict = CheckGeometryd
CropToMaskD = CropToMaskDict = CropToMaskd
SegmentROID = SegmentROIDict = SegmentROId
