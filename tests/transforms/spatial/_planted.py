"""Inputs with a known planted region, in the file formats the bundles read (PNG, DICOM radiograph, NIfTI volume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS, COLS = 48, 80  # a 2D radiograph; network size 16 x 16 divides it by 3 and 5
PLANT_2D = (slice(12, 30), slice(20, 60))  # rows, cols: multiples of 3 and 5, so nearest resizing keeps it exactly

# a 3D exam stored (col, row, slice)-like: file axes (A-P, L-R, S-I); the knee loader reads it slices first
# (left-right), so its voxel order is not the file's; oblique-free but permuted, flipped and offset
FILE_AFFINE = np.array([[0.0, -3.0, 0.0, 40.0], [0.5, 0.0, 0.0, -20.0], [0.0, 0.0, -0.5, 35.0], [0, 0, 0, 1.0]])
FILE_SHAPE = (20, 10, 20)  # (A-P, L-R, S-I) = loaded (slices 10, rows 20, cols 20) permuted
PLANT_LOADED = (slice(3, 6), slice(4, 12), slice(6, 16))  # (slice, row, col) on the loader's grid


def image_2d() -> tuple[np.ndarray, np.ndarray]:
    """A gray (48, 80) uint8 image with a dark planted rectangle, and its 0/1 mask."""
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[PLANT_2D] = 1
    img = np.full((ROWS, COLS), 180, np.uint8) - 120 * mask
    return img, mask


def write_png(path: Path) -> np.ndarray:
    from PIL import Image

    img, mask = image_2d()
    Image.fromarray(img).save(path)
    return mask


def write_dicom(path: Path, spacing=(0.7, 0.4)) -> np.ndarray:
    """A MONOCHROME2 CR radiograph with pixel spacing ``(row, col)`` mm; returns its planted mask."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    img, mask = image_2d()
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.update({"MediaStorageSOPClassUID": ComputedRadiographyImageStorage, "MediaStorageSOPInstanceUID": uid,
                         "TransferSyntaxUID": ExplicitVRLittleEndian})
    ds.update({"SOPClassUID": ComputedRadiographyImageStorage, "SOPInstanceUID": uid, "Modality": "CR",
               "PatientID": "anon", "Rows": ROWS, "Columns": COLS, "PixelSpacing": list(spacing),
               "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 8,
               "BitsStored": 8, "HighBit": 7, "PixelRepresentation": 0, "PixelData": img.tobytes()})
    ds.save_as(path, enforce_file_format=True)
    return mask


def loaded_to_file(arr: np.ndarray) -> np.ndarray:
    """An array on the knee loader's (slice, row, col) grid in the voxel order of the file of :data:`FILE_AFFINE`."""
    # loaded axes: slice = file axis 1 (L-R), row = file axis 2 (S-I), col = file axis 0 (A-P)
    return np.ascontiguousarray(np.asarray(arr).transpose(2, 0, 1))


def write_exam(path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI exam of :data:`FILE_SHAPE` with :data:`FILE_AFFINE`; returns (volume, planted mask) in file order."""
    import nibabel as nib

    loaded = np.random.default_rng(seed).random((10, 20, 20)).astype(np.float32) * 100
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[PLANT_LOADED] = 1
    vol, fmask = loaded_to_file(loaded + 300 * mask.astype(np.float32)), loaded_to_file(mask)
    assert vol.shape == FILE_SHAPE
    nib.save(nib.Nifti1Image(vol, FILE_AFFINE), str(path))
    return vol, fmask
