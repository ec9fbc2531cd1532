"""The fast path: ``uint8`` images for the decode cache, a cache boundary marker, batched device augmentation."""

from medplugin.transforms.fast.array import BatchRandAugment, CacheBoundary, ToUint8
from medplugin.transforms.fast.dictionary import (
    BatchRandAugmentD,
    BatchRandAugmentd,
    BatchRandAugmentDict,
    ToUint8D,
    ToUint8d,
    ToUint8Dict,
)

__all__ = [
    "BatchRandAugment",
    "BatchRandAugmentd",
    "BatchRandAugmentD",
    "BatchRandAugmentDict",
    "CacheBoundary",
    "ToUint8",
    "ToUint8d",
    "ToUint8D",
    "ToUint8Dict",
]
