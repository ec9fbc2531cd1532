"""medplugin.io: MONAI ImageReaders and the readers behind them (2D images and DICOM radiographs, knee MRI), and the
DICOM results (Structured Report, Secondary Capture, SEG) written with highdicom (medplugin.io.dicom_results)."""

from medplugin.io.dicom import is_dicom, read_dicom_image
from medplugin.io.dicom_results import (
    ImageClassification,
    ModelInfo,
    write_cam_secondary_capture,
    write_classification_sr,
    write_segmentation,
)
from medplugin.io.readers import Image2dReader, KneeVolumeReader, MRNetReader

__all__ = ["Image2dReader", "KneeVolumeReader", "MRNetReader", "is_dicom", "read_dicom_image", "ImageClassification",
           "ModelInfo", "write_cam_secondary_capture", "write_classification_sr", "write_segmentation"]
