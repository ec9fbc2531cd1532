"""DICOM results a PACS can store, written with highdicom: SR findings, Grad-CAM Secondary Captures, SEG masks.

Every object goes into its source's study (patient and study modules copied from the source by highdicom, as
the standard requires, nothing else), in a new series with new Series and SOP Instance UIDs, as
``<output_dir>/<SOP Instance UID>.dcm``. A source that cannot be used raises :class:`medplugin.BadInputError`
(``"<file>: <reason>"``), so a batch caller records it and goes on. Works with highdicom 0.28 on pydicom 3 and
with highdicom 0.22 on pydicom 2 (MONAI Label's environment).
"""

from medplugin.io.dicom_results._common import ModelInfo, read_series, read_source, series_affine
from medplugin.io.dicom_results.sc import write_cam_secondary_capture
from medplugin.io.dicom_results.seg import (
    ACL_REGION,
    LUNGS,
    SegmentSpec,
    read_segmentation_mask,
    to_series_grid,
    write_segmentation,
)
from medplugin.io.dicom_results.sr import (
    ImageClassification,
    calls_at_operating_points,
    read_classification_sr,
    write_classification_sr,
)

__all__ = [
    "ACL_REGION",
    "LUNGS",
    "ImageClassification",
    "ModelInfo",
    "SegmentSpec",
    "calls_at_operating_points",
    "read_classification_sr",
    "read_segmentation_mask",
    "read_series",
    "read_source",
    "series_affine",
    "to_series_grid",
    "write_cam_secondary_capture",
    "write_classification_sr",
    "write_segmentation",
]
