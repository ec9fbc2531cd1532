"""Dictionary transforms that crop: to a mask's box (invertible), to a fundus field of view; the crop box as a
tensor."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import Cropd, MapTransform
from monai.utils import TransformBackends

from medplugin.transforms.crop.array import CropToMask, FundusFOVCrop
from medplugin.transforms.utils import MaskedMapTransform, voxel_spacing

__all__ = [
    "CropToMaskd",
    "CropToMaskD",
    "CropToMaskDict",
    "FundusFOVCropd",
    "FundusFOVCropD",
    "FundusFOVCropDict",
    "CropBoxToTensord",
    "CropBoxToTensorD",
    "CropBoxToTensorDict",
    "NO_CROP_BOX",
    "RememberShaped",
]

NO_CROP_BOX = (-1, -1, -1, -1, -1, -1)
"""``crop_box`` of a 2D item without a crop (e.g. an unreadable file in batch inference)."""


class CropToMaskd(Cropd):
    """Dictionary wrapper of :class:`CropToMask`: crop every key to the box of ``data[mask_key]``; invertible.

    All ``keys`` get the same box (e.g. the image and its label), computed on the first key's spatial size;
    the mask itself is cropped only if it is one of ``keys``. The box is stored under ``box_key`` as
    ``{"start", "end", "empty"}`` in input voxels, plus ``"start_mm"``/``"end_mm"`` (the corner voxels in world
    mm) and ``"spacing_mm"`` when the first key is a ``MetaTensor``. ``inverse`` (MONAI's ``Invertd``) pads the
    keys back to the uncropped grid.

    Args:
        keys: keys to crop.
        mask_key: key of the mask.
        box_key: where to store the box (``None``: not stored).
        allow_missing_keys: do not raise if a key is absent.
        kwargs: the arguments of :class:`CropToMask` (margin, margin_unit, min_size, empty, spacing, spatial_dims,
            mask_name).

    Raises:
        KeyError: ``mask_key`` is not in the data.
    """

    backend = CropToMask.backend

    def __init__(self, keys: KeysCollection, mask_key: str = "roi_mask", box_key: str | None = "roi_box",
                 allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, CropToMask(**kwargs), allow_missing_keys)
        self.mask_key = mask_key
        self.box_key = box_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor], lazy: bool | None = None) -> dict:
        d = dict(data)
        if self.mask_key not in d:
            raise KeyError(f"mask key {self.mask_key!r} not in the data (keys: {sorted(map(str, d))}).")
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        first = d[keys[0]]
        box = dict(self.cropper.compute_box(first, d[self.mask_key]))
        if isinstance(first, MetaTensor):
            sd = len(box["start"])
            affine = to_affine_nd(sd, first.affine.detach().cpu().numpy().astype(np.float64))
            corners = np.array([box["start"], np.asarray(box["end"]) - 1], dtype=np.float64)
            mm = corners @ affine[:sd, :sd].T + affine[:sd, sd]
            box["start_mm"], box["end_mm"] = mm[0].round(3).tolist(), mm[1].round(3).tolist()
            box["spacing_mm"] = voxel_spacing(first, spatial_dims=sd).round(4).tolist()
        for key in keys:
            d[key] = self.cropper.crop(d[key], box)
        self.cropper.last_box = box
        if self.box_key is not None:
            d[self.box_key] = box
        return d


class FundusFOVCropd(MaskedMapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.crop.array.FundusFOVCrop`.

    Args:
        keys: image keys to crop.
        spatial_size: output side in pixels.
        mask_key: where to store each key's FOV mask (1, S, S) float32; one name or one per key; ``None``: none.
        allow_missing_keys: skip missing keys instead of raising.
        kwargs: further arguments of ``FundusFOVCrop`` (threshold, mask_scale, min_area_fraction).
    """

    backend = FundusFOVCrop.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int = 512,
        mask_key: str | Sequence[str | None] | None = None,
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        super().__init__(keys, FundusFOVCrop(spatial_size, return_mask=True, **kwargs), mask_key, allow_missing_keys)

    def apply(self, d: dict, key, mask_key: str | None) -> None:
        """Crop ``d[key]``; store its mask under ``mask_key``."""
        d[key], mask = self.transform(d[key])
        if mask_key is not None:
            d[mask_key] = mask


class CropBoxToTensord(MapTransform):
    """Turn a 2D crop box dict of :class:`CropToMaskd` into a collatable int tensor.

    ``data[box_key] = {"start": [r0, c0], "end": [r1, c1], ...}`` becomes ``data[out_key] = tensor([r0, c0, r1,
    c1, H, W])`` (the crop in pixels of the loaded image, end-exclusive, then the loaded image's size ``(H, W)``,
    stored under ``_loaded_shape`` by :class:`RememberShaped`, or the crop's end when absent), and the box dict and
    ``mask_key`` are removed so that batches collate. Evaluation uses it to map ground-truth boxes into the
    classifier's frame (:class:`medplugin.handlers.LocalizationEvaluator`).

    Args:
        keys: unused placeholder for the MapTransform signature (the image key).
        box_key: key of the box dict.
        out_key: key of the tensor written.
        mask_key: key of the mask to drop (``None``: keep).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, keys: KeysCollection = "image", box_key: str = "lung_box", out_key: str = "crop_box",
                 mask_key: str | None = "lung_mask") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.box_key, self.out_key, self.mask_key = box_key, out_key, mask_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        box = d.pop(self.box_key, None)
        if self.mask_key is not None:
            d.pop(self.mask_key, None)
        if box is None:
            return d
        h, w = d.pop(RememberShaped.shape_key, (int(box["end"][0]), int(box["end"][1])))
        d[self.out_key] = torch.tensor([*box["start"], *box["end"], h, w], dtype=torch.long)
        return d


class RememberShaped(MapTransform):
    """Store the first key's spatial shape under ``_loaded_shape`` (read by :class:`CropBoxToTensord`)."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    shape_key = "_loaded_shape"

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.shape_key] = tuple(int(s) for s in d[key].shape[-2:])
            break
        return d


CropToMaskD = CropToMaskDict = CropToMaskd
FundusFOVCropD = FundusFOVCropDict = FundusFOVCropd
CropBoxToTensorD = CropBoxToTensorDict = CropBoxToTensord
