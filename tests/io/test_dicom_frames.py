"""Multi-frame DICOM objects given to the 2-D reader: a stack of frames is refused (never scored by its first
frame), one frame is read when asked for, and an enhanced object's Pixel Spacing comes from its functional groups."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from medplugin.errors import BadInputError  # noqa: E402
from medplugin.io import read_dicom_image  # noqa: E402
from medplugin.io.image2d import read_image_2d  # noqa: E402
from tests.bundles._dicom_results import ophthalmic_image  # noqa: E402
from tests.io._dicom_helpers import sample_file  # noqa: E402


def _minmax(frame: np.ndarray) -> np.ndarray:
    """What the reader makes of a grayscale frame without a window: its min..max onto 0..255."""
    f = frame.astype(np.float64)
    return (f - f.min()) * 255.0 / (f.max() - f.min())


def _oct_volume(frames: int = 5, rows: int = 40, cols: int = 48) -> np.ndarray:
    """B-scans that differ: frame ``k`` (from 0) holds a bright band at row ``5 + 6 k`` on a noisy background."""
    rng = np.random.default_rng(7)
    volume = rng.integers(0, 60, (frames, rows, cols), dtype=np.uint8)
    for k in range(frames):
        volume[k, 5 + 6 * k: 8 + 6 * k] = 200 + k
    return volume


def test_a_real_multiframe_image_is_refused_unless_a_frame_is_asked_for():
    """A real 10-frame Enhanced MR file: refused by name, frame count and what to do (a 2-D model would otherwise
    score its first frame as the whole input); ``frame=k`` reads frame ``k``'s own pixels (min..max scaled)."""
    path = sample_file("emri_small.dcm")
    with pytest.raises(BadInputError) as refused:
        read_dicom_image(path)
    assert str(refused.value) == (
        f"{path}: a multi-frame image of 10 frames (Enhanced MR Image Storage): a 2-D model takes one image per "
        "file, not 10 (only the first would be scored); export the images as single-frame images (one file each)")
    stack = pydicom.dcmread(path).pixel_array
    for k in (1, 4, 10):
        image, meta = read_dicom_image(path, frame=k)
        assert image.shape == (64, 64) and meta["frames"] == 10
        np.testing.assert_allclose(image, _minmax(stack[k - 1]), atol=1e-3)
    for bad in (0, 11, True, 2.0):
        with pytest.raises(ValueError, match=rf"frame must be a frame number from 1 to 10 for .*emri_small\.dcm, "
                                             rf"got {re.escape(repr(bad))}"):
            read_dicom_image(path, frame=bad)


def test_an_oct_volume_in_one_file_is_refused_with_what_to_do(tmp_path):
    """An OCT device's volume (5 B-scans in one Ophthalmic Tomography Image): the bundles' reader refuses it,
    naming the file, the 5 frames and the export of single B-scans; each B-scan read alone is its own pixels with
    the shared Pixel Spacing."""
    volume = _oct_volume()
    path = ophthalmic_image(tmp_path / "eye.dcm", volume, "OPT", pixel_spacing=(0.0039, 0.0117))
    expected = (f"{path}: a multi-frame image of 5 frames (Ophthalmic Tomography Image Storage): a 2-D model takes "
                "one B-scan per image, not 5 (only the first would be scored); export the B-scans as single-frame "
                "images (one file each)")
    for read in (read_dicom_image, lambda p: read_image_2d(p, channels=1)):
        with pytest.raises(BadInputError) as refused:
            read(path)
        assert str(refused.value) == expected
    for k in range(1, 6):
        image, meta = read_dicom_image(path, frame=k)
        np.testing.assert_allclose(image, _minmax(volume[k - 1]), atol=1e-3)
        assert meta["frames"] == 5 and meta["pixel_spacing"] == [0.0039, 0.0117]
    assert int(np.argmax(read_dicom_image(path, frame=3)[0].mean(axis=1))) in range(17, 20)  # frame 3's band


@pytest.mark.parametrize("per_frame", [False, True], ids=["shared", "per-frame"])
def test_a_one_frame_enhanced_b_scan_is_read_with_the_pixel_spacing_of_its_functional_groups(tmp_path, per_frame):
    """A single B-scan stored as a one-frame enhanced Ophthalmic Tomography Image (Number of Frames 1) is one image:
    read as it is, with the Pixel Spacing its functional groups hold (shared, or the frame's own)."""
    scan = _oct_volume(1)[0]
    path = ophthalmic_image(tmp_path / "scan.dcm", scan, "OPT", pixel_spacing=(0.5, 0.25), spacing_per_frame=per_frame)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert "PixelSpacing" not in ds and int(ds.NumberOfFrames) == 1
    assert ("PixelMeasuresSequence" in ds.PerFrameFunctionalGroupsSequence[0]) is per_frame
    image, meta = read_dicom_image(path)
    np.testing.assert_allclose(image, _minmax(scan), atol=1e-3)
    assert meta["frames"] == 1 and meta["pixel_spacing"] == [0.5, 0.25] and meta["modality"] == "OPT"
    array, _ = read_image_2d(Path(path), channels=1)
    assert array.shape == (1, 40, 48)
