"""Dictionary twins of :mod:`medplugin.transforms.labels.array`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from medplugin.errors import BadInputError
from medplugin.transforms.labels.array import ClassIndexFromFile, LoadLungMask, MultiHotFromFile

__all__ = ["ClassIndexFromFiled", "ClassIndexFromFileD", "ClassIndexFromFileDict", "MultiHotFromFiled",
           "MultiHotFromFileD", "MultiHotFromFileDict", "LoadLungMaskd", "LoadLungMaskD", "LoadLungMaskDict"]


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

    def __init__(
        self, keys: KeysCollection, reference_key: str | None = "image", allow_missing_keys: bool = False
    ) -> None:
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
                raise BadInputError(
                    mask.meta["filename_or_obj"], f"mask size {w}x{h} differs from its image's {rw}x{rh}"
                )
            d[key] = mask
        return d


LoadLungMaskD = LoadLungMaskDict = LoadLungMaskd
