"""medplugin.io."""

from medplugin.io.dicom import is_dicom, read_dicom_image

__all__ = ["is_dicom", "read_dicom_image"]
