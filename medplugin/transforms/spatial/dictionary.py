"""Dictionary twins of :mod:`medplugin.transforms.spatial.array`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medplugin.transforms.spatial.array import CheckGeometry, ToOriginalOrientation

__all__ = ["CheckGeometryd", "CheckGeometryD", "CheckGeometryDict", "ToOriginalOrientationd",
           "ToOriginalOrientationD", "ToOriginalOrientationDict"]


class CheckGeometryd(MapTransform):
    """Dictionary wrapper of :class:`CheckGeometry`: every key must lie on the grid of ``reference_key``.

    Args:
        keys: mask keys to check (e.g. ``label``).
        reference_key: the image key.
        affine_atol: tolerance in mm when comparing affines.
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = CheckGeometry.backend

    def __init__(self, keys: KeysCollection, reference_key: str = "image", affine_atol: float = 1e-3,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        self.checker = CheckGeometry(affine_atol)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.checker(d[key], d[self.reference_key])
        return d


class ToOriginalOrientationd(MapTransform):
    """Dictionary wrapper of :class:`ToOriginalOrientation`.

    Used in the 3D segmentation bundle's MONAI Label inference overlay: the prediction and the image (whose
    metadata MONAI Label's restore step reads for the output grid) go back to the exam file's voxel order.

    Args:
        keys: keys to reorder (e.g. ``["pred", "image"]``).
        ref_key: key of the ``MetaTensor`` whose grid (``affine``, ``original_affine``) a plain-tensor key has
            (e.g. ``"image"`` for a plain prediction); read before any key is changed. ``None``: each key's own.
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = ToOriginalOrientation.backend

    def __init__(self, keys: KeysCollection, ref_key: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.reorder = ToOriginalOrientation()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        ref = d.get(self.ref_key) if self.ref_key is not None else None
        ref = ref.clone() if isinstance(ref, MetaTensor) else None
        for key in self.key_iterator(d):
            own = isinstance(d[key], MetaTensor) and "original_affine" in d[key].meta
            d[key] = self.reorder(d[key], None if own or ref is None else ref)
        return d


CheckGeometryD = CheckGeometryDict = CheckGeometryd
ToOriginalOrientationD = ToOriginalOrientationDict = ToOriginalOrientationd
