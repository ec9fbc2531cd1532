"""medplugin.io."""

from medplugin.io.dicom import is_dicom, read_dicom_image

__all__ = ["is_dicom", "read_dicom_image"]

# DICOM results (SR, Secondary Capture, SEG) written with highdicom; the rest in medplugin.io.dicom_results
from medplugin.io.dicom_results import (  # noqa: E402
    ImageClassification,
    ModelInfo,
    write_cam_secondary_capture,
    write_classification_sr,
    write_segmentation,
)

__all__ += ["ImageClassification", "ModelInfo", "write_cam_secondary_capture", "write_classification_sr",
            "write_segmentation"]
