"""2D NIfTI radiographs through the 2D reader: rows first, min..max to 0..255, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from medplugin.errors import BadInputError  # noqa: E402
from medplugin.io.image2d import looks_like_image, read_image_2d  # noqa: E402


def test_2d_nifti_reads_rows_first_and_scaled(tmp_path):
    rows = np.arange(6 * 4, dtype=np.float32).reshape(6, 4) * 10 - 50  # (rows, cols)
    nib.save(nib.Nifti1Image(rows.T[:, :, None].copy(), np.diag([0.5, 0.8, 1.0, 1.0])), tmp_path / "x.nii.gz")
    arr, meta = read_image_2d(tmp_path / "x.nii.gz")
    assert arr.shape == (1, 6, 4) and meta["format"] == "NIfTI"
    np.testing.assert_allclose(arr[0], (rows - rows.min()) * 255 / (rows.max() - rows.min()), atol=1e-4)
    assert meta["pixel_spacing"] == pytest.approx([0.8, 0.5])  # [row, column] mm
    assert looks_like_image(tmp_path / "x.nii.gz") and not looks_like_image(tmp_path / "x.gz")


def test_3d_and_corrupt_nifti_are_bad_input(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.eye(4)), tmp_path / "vol.nii")
    with pytest.raises(BadInputError, match=r"vol.nii: expected a 2D NIfTI image"):
        read_image_2d(tmp_path / "vol.nii")
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    with pytest.raises(BadInputError, match=r"bad.nii.gz: corrupt or truncated NIfTI"):
        read_image_2d(tmp_path / "bad.nii.gz")
