"""Segmenting with a segmentation bundle's trained network (2D or 3D) and cleaning masks with MONAI."""

from medplugin.transforms.segment.array import (
    RESIZE_2D,
    SEGMENTATION_BUNDLES,
    SegmentWithModel,
    clean_mask,
    segmentation_network_from_meta,
)
from medplugin.transforms.segment.dictionary import SegmentWithModeld

__all__ = ["RESIZE_2D", "SEGMENTATION_BUNDLES", "SegmentWithModel", "SegmentWithModeld", "clean_mask",
           "segmentation_network_from_meta"]
