"""medplugin.io: MONAI ImageReaders and the readers behind them (2D images and DICOM radiographs, knee MRI)."""

from medplugin.io.dicom import is_dicom, read_dicom_image
from medplugin.io.readers import Image2dReader, KneeVolumeReader, MRNetReader

__all__ = ["Image2dReader", "KneeVolumeReader", "MRNetReader", "is_dicom", "read_dicom_image"]
