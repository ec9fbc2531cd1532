"""Dictionary wrappers of the fast-path transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from medplugin.transforms.fast.array import BatchRandAugment, ToUint8

__all__ = ["BatchRandAugmentd", "BatchRandAugmentD", "BatchRandAugmentDict", "ToUint8d", "ToUint8D", "ToUint8Dict"]


class ToUint8d(MapTransform):
    """Dictionary wrapper of :class:`ToUint8`: rounds the images under ``keys`` to ``uint8``.

    Args:
        keys: image keys.
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = ToUint8.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToUint8()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        """Return a copy of ``data`` with its images as ``uint8``."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class BatchRandAugmentd(Randomizable, MapTransform):
    """Dictionary wrapper of :class:`BatchRandAugment` for a collated batch: one draw per image, the same draw
    for every key (an image and its mask move together).

    Args:
        keys: keys of ``(B, C, H, W)`` tensors.
        rotate_degrees, hflip, vflip, zoom, intensity, prob: as :class:`BatchRandAugment`.
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = BatchRandAugment.backend

    def __init__(self, keys: KeysCollection, rotate_degrees: float = 10.0, hflip: bool = True, vflip: bool = False,
                 zoom: Sequence[float] | None = (0.9, 1.1), intensity: float = 0.1, prob: float = 0.5,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.augment = BatchRandAugment(rotate_degrees, hflip, vflip, zoom, intensity, prob)

    def set_random_state(self, seed=None, state=None) -> BatchRandAugmentd:
        super().set_random_state(seed, state)
        self.augment.set_random_state(seed, state)
        return self

    def randomize(self, data: int) -> None:
        """Draw the parameters of a batch of ``data`` images."""
        self.augment.randomize(data)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        """Return a copy of ``data`` with the tensors under ``keys`` augmented."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        if keys:
            self.randomize(d[keys[0]].shape[0])
        for key in keys:
            d[key] = self.augment(d[key], randomize=False)
        return d


ToUint8D = ToUint8Dict = ToUint8d
BatchRandAugmentD = BatchRandAugmentDict = BatchRandAugmentd
