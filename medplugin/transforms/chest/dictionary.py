"""Dictionary transforms for chest radiographs: segment the lung fields, crop to them."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medplugin.errors import BadInputError
from medplugin.transforms.chest.array import LoadLungMask, LungCrop, SegmentLungs

__all__ = [
    "LoadLungMaskd",
    "LoadLungMaskD",
    "LoadLungMaskDict",
    "LungCropd",
    "LungCropD",
    "LungCropDict",
    "SegmentLungsd",
    "SegmentLungsD",
    "SegmentLungsDict",
]


class LoadLungMaskd(MapTransform):
    """Dictionary wrapper of :class:`LoadLungMask`: replaces each mask path (or list of paths) by the mask.

    With ``reference_key`` (the image, already loaded), the mask must have the image's spatial size.

    Args:
        keys: keys holding a mask path or a list of paths to merge.
        reference_key: key of the loaded image whose ``(H, W)`` the mask must match, or ``None``.
        allow_missing_keys: do not raise if a key is absent (inference data has no mask).

    Raises:
        BadInputError: unreadable masks, or a mask whose size differs from the image's, naming the mask file.
    """

    backend = LoadLungMask.backend

    def __init__(self, keys: KeysCollection, reference_key: str | None = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        self.loader = LoadLungMask()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = self.loader(d[key])
            ref = d.get(self.reference_key) if self.reference_key is not None else None
            if ref is not None and hasattr(ref, "shape") and tuple(ref.shape[-2:]) != tuple(mask.shape[-2:]):
                (h, w), (rh, rw) = mask.shape[-2:], ref.shape[-2:]
                raise BadInputError(mask.meta["filename_or_obj"], f"mask size {w}x{h} differs from its image's {rw}x{rh}")
            d[key] = mask
        return d


class LungCropd(MapTransform):
    """Dictionary wrapper of :class:`LungCrop`: crop every key to the box of ``data[mask_key]`` plus a margin.

    All ``keys`` get the same box (e.g. the image and its label); the mask itself is cropped only if it is one
    of ``keys``. The box is computed on the first key's spatial size and stored under ``box_key`` as
    ``{"start": [row, col], "end": [row, col], "empty": bool}`` (pixels of the input, end-exclusive).

    Empty mask: ``empty="full"`` (default) keeps the whole image with a logged warning (``"empty": True`` in
    the stored box); ``empty="raise"`` raises :class:`~medplugin.errors.BadInputError` naming the file.

    Args:
        keys: keys to crop.
        mask_key: key of the mask (``(H, W)`` or ``(C, H, W)``, the image's spatial size).
        margin: fraction of the box's size added on each side, one number or ``(rows, columns)``.
        empty: ``"full"`` or ``"raise"``.
        box_key: where to store the box (``None``: not stored).
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = LungCrop.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "lung_mask",
        margin: Sequence[float] | float = 0.05,
        empty: str = "full",
        box_key: str | None = "lung_box",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.box_key = box_key
        self.cropper = LungCrop(margin=margin, empty=empty)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if self.mask_key not in d:
            raise KeyError(f"mask key {self.mask_key!r} not in the data (keys: {sorted(map(str, d))}).")
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        box = self.cropper.compute_box(d[keys[0]], d[self.mask_key])
        for key in keys:
            d[key] = self.cropper.crop(d[key], box)
        self.cropper.last_box = box
        if self.box_key is not None:
            d[self.box_key] = box
        return d


class SegmentLungsd(MapTransform):
    """Dictionary wrapper of :class:`SegmentLungs`: segments ``data[key]`` and stores the mask under ``mask_key``.

    Args:
        keys: the image key (one key; the first present one is used).
        model_path: the lung segmentation bundle's ``model.pt`` (``model.json`` beside it).
        mask_key: where to store the mask (``(1, H, W)`` for a channel-first image).
        device: ``"cpu"``, ``"cuda"``, a ``torch.device`` or ``"auto"``.
        keep_components: largest regions kept (2: the lungs; ``None``: all).
        fill_holes: fill holes inside the kept regions.
        allow_missing_keys: do not raise if the key is absent.
    """

    backend = SegmentLungs.backend

    def __init__(
        self,
        keys: KeysCollection,
        model_path: str | os.PathLike,
        mask_key: str = "lung_mask",
        device: str | torch.device = "cpu",
        keep_components: int | None = 2,
        fill_holes: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.segmenter = SegmentLungs(model_path, device=device, keep_components=keep_components, fill_holes=fill_holes)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = self.segmenter(d[key])
            break
        return d


LoadLungMaskD = LoadLungMaskDict = LoadLungMaskd
LungCropD = LungCropDict = LungCropd
SegmentLungsD = SegmentLungsDict = SegmentLungsd
