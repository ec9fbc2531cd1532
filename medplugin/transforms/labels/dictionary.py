"""Dictionary twins of :mod:`medplugin.transforms.labels.array`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medplugin.errors import BadInputError
from medplugin.transforms.labels.array import (
    ClassIndexFromFile,
    MultiHotFromFile,
    ResizeToSourceImage,
    ToSourceVoxelOrder,
)

__all__ = ["ClassIndexFromFiled", "ClassIndexFromFileD", "ClassIndexFromFileDict", "MultiHotFromFiled",
           "MultiHotFromFileD", "MultiHotFromFileDict", "ResizeToSourceImaged",
           "ResizeToSourceImageD", "ResizeToSourceImageDict", "ToSourceVoxelOrderd", "ToSourceVoxelOrderD",
           "ToSourceVoxelOrderDict"]


class ClassIndexFromFiled(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.labels.array.ClassIndexFromFile`.

    Used in a classification bundle's MONAI Label training overlay, where ``label`` holds the path of the
    image's label file in the studies folder (``labels/final/<id>.txt`` naming the class).

    Args:
        keys: label keys (usually ``"label"``).
        class_names: the bundle's class order.
        image_key: key whose value names the sample in error messages when the label is not a file.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = ClassIndexFromFile.backend

    def __init__(self, keys: KeysCollection, class_names: Sequence[str], image_key: str | None = "image",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ClassIndexFromFile(class_names)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.converter(d[key])
            except BadInputError as e:
                if e.path == "<label>" and self.image_key and isinstance(d.get(self.image_key), str):
                    raise BadInputError(d[self.image_key], e.reason) from e
                raise
        return d


ClassIndexFromFileD = ClassIndexFromFileDict = ClassIndexFromFiled


class MultiHotFromFiled(ClassIndexFromFiled):
    """Dictionary twin of :class:`~medplugin.transforms.labels.array.MultiHotFromFile`.

    Used in a multi-label bundle's MONAI Label training overlay, where ``label`` holds the path of the image's
    label file (``labels/final/<id>.txt`` listing its findings, ``Effusion|Mass`` or ``No Finding``).

    Args:
        keys: label keys (usually ``"label"``).
        class_names: the bundle's finding order.
        none_names: labels that mean no finding present.
        image_key: key whose value names the sample in error messages when the label is not a file.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = MultiHotFromFile.backend

    def __init__(self, keys: KeysCollection, class_names: Sequence[str], none_names: Sequence[str] = ("No Finding",),
                 image_key: str | None = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, class_names, image_key, allow_missing_keys)
        self.converter = MultiHotFromFile(class_names, none_names)


MultiHotFromFileD = MultiHotFromFileDict = MultiHotFromFiled


class ResizeToSourceImaged(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.labels.array.ResizeToSourceImage`.

    Used in a segmentation bundle's MONAI Label inference overlay so that the mask MONAI Label returns lies on
    the image's own pixel grid.

    Args:
        keys: label-map keys (usually ``"pred"``).
        path_key: key holding the source image's path (``LoadImage2dd`` keeps it under ``"path"``).
        mode: interpolation mode (``"nearest"`` for label maps).
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = ResizeToSourceImage.backend

    def __init__(self, keys: KeysCollection, path_key: str = "path", mode: str = "nearest",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = ResizeToSourceImage(mode)
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.path_key not in d:
            raise KeyError(f"{self.path_key!r} (the source image path) is not in the data; keys: {sorted(map(str, d))}")
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key], d[self.path_key])
        return d


ResizeToSourceImageD = ResizeToSourceImageDict = ResizeToSourceImaged


class ToSourceVoxelOrderd(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.labels.array.ToSourceVoxelOrder`.

    Used in a 3D segmentation bundle's MONAI Label inference overlay so that the NIfTI mask MONAI Label returns
    has the exam's voxel grid.

    Args:
        keys: label-map keys (usually ``"pred"``).
        path_key: key holding the source NIfTI path (MONAI Label sets ``"image_path"``).
        order: the loader's ``order``.
        ref_key: the input image's key. When given, that image's metadata (a ``MetaTensor``'s ``meta``) is set
            to the file's grid (``spatial_shape`` and ``affine``), for consumers that take the output grid from
            it: MONAI Label resizes a prediction to the reference image's ``spatial_shape`` and writes it with
            its affine. The image's data are not changed.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = ToSourceVoxelOrder.backend

    def __init__(self, keys: KeysCollection, path_key: str = "image_path", order: str = "sagittal",
                 ref_key: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reorder = ToSourceVoxelOrder(order)
        self.path_key = path_key
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.path_key not in d:
            raise KeyError(f"{self.path_key!r} (the source volume path) is not in the data; keys: {sorted(map(str, d))}")
        for key in self.key_iterator(d):
            d[key] = self.reorder(d[key], d[self.path_key])
        if self.ref_key is not None and hasattr(d.get(self.ref_key), "meta"):
            import torch

            affine, shape = self.reorder.header(d[self.path_key])
            ref = d[self.ref_key].clone()
            ref.meta["spatial_shape"] = np.asarray(shape)
            ref.meta["affine"] = ref.meta["original_affine"] = torch.as_tensor(affine, dtype=torch.float64)
            d[self.ref_key] = ref
        return d


ToSourceVoxelOrderD = ToSourceVoxelOrderDict = ToSourceVoxelOrderd
