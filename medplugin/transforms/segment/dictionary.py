"""Dictionary wrapper of :class:`~medplugin.transforms.segment.array.SegmentWithModel`."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform

from medplugin.transforms.segment.array import SegmentWithModel

__all__ = ["SegmentWithModeld", "SegmentWithModelD", "SegmentWithModelDict"]


class SegmentWithModeld(MapTransform):
    """Dictionary wrapper of :class:`SegmentWithModel`: segments ``data[key]`` and stores the mask under ``mask_key``.

    Args:
        keys: the image key (one key; the first present one is used).
        model_path: the segmentation bundle's ``model.pt`` (``model.json`` beside it).
        mask_key: where to store the mask (the image's channel layout).
        allow_missing_keys: do not raise if the key is absent.
        kwargs: the arguments of :class:`SegmentWithModel` (device, keep_components, fill_holes, overlap,
            sw_batch_size, roi_size, model_name).
    """

    backend = SegmentWithModel.backend

    def __init__(self, keys: KeysCollection, model_path: str | os.PathLike, mask_key: str = "roi_mask",
                 allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.segmenter = SegmentWithModel(model_path, **kwargs)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = self.segmenter(d[key])
            break
        return d


SegmentWithModelD = SegmentWithModelDict = SegmentWithModeld
