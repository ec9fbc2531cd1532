"""LoadKneeVolume: knee MRI exams (NIfTI, MRNet .npy) as MetaTensors, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from medplugin.data.synthetic.knee import make_knee_nifti_demo
from medplugin.errors import BadInputError
from medplugin.transforms import LoadKneeVolume


def test_load_knee_volume_reads_nifti_and_npy(tmp_path):
    make_knee_nifti_demo(tmp_path, n=1, shape=(8, 32, 32), seed=1)
    vol = LoadKneeVolume()(tmp_path / "exams/knee_000.nii.gz")
    assert vol.shape == (1, 8, 32, 32) and vol.meta["filename_or_obj"].endswith("knee_000.nii.gz")
    np.save(tmp_path / "0000.npy", (np.random.default_rng(0).random((8, 32, 32)) * 255).astype(np.uint8))
    npy = LoadKneeVolume(channel_first=False, npy_spacing=(3, 0.5, 0.5))(tmp_path / "0000.npy")
    assert npy.shape == (8, 32, 32)
    np.testing.assert_allclose(np.diag(npy.affine.numpy())[:3], [3, 0.5, 0.5])
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(BadInputError, match="bad.nii.gz"):
        LoadKneeVolume()(tmp_path / "bad.nii.gz")
