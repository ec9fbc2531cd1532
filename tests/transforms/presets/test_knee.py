"""The knee classifier's preprocessing: fixed slice count, MONAI's invertible steps, CAMs back on the loaded grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from medplugin.transforms import knee_classification_augmentation, knee_classification_preprocessing

# stored (slice, row, col): slices along left-right (3 mm), rows along superior-inferior, columns along the rest,
# so the loader (slices first, sagittal) reads the array as stored
AFFINE = np.array([[3.0, 0, 0, -10], [0, 0, 0.5, -20], [0, -0.5, 0, 30], [0, 0, 0, 1]])


def _exam(tmp_path, slices: int, rows: int = 40, cols: int = 30, seed: int = 0) -> str:
    vol = np.random.default_rng(seed).random((slices, rows, cols)).astype(np.float32) * 1000
    path = tmp_path / f"exam_{slices}_{rows}_{cols}.nii.gz"
    nib.save(nib.Nifti1Image(vol, AFFINE), str(path))
    return str(path)


@pytest.mark.parametrize("slices", [12, 5, 8])
def test_slice_count_is_fixed_and_intensities_scaled(tmp_path, slices):
    x = knee_classification_preprocessing(image_size=16, num_slices=8, mean=0.5, std=0.25)(
        {"image": _exam(tmp_path, slices)})["image"]
    assert isinstance(x, MetaTensor) and x.shape == (1, 8, 16, 16) and x.dtype == torch.float32
    if slices < 8:  # padded slices (both sides) hold the value of 0 after normalisation
        pad = (8 - slices) // 2
        assert torch.allclose(x[0, 0], torch.full((16, 16), -2.0)) and torch.allclose(x[0, pad + slices], x[0, 0])
    assert float(x.max()) <= (1 - 0.5) / 0.25 + 1e-5  # intensities scaled to [0, 1] before normalisation
    same = knee_classification_preprocessing(image_size=30, num_slices=None, mean=0.5, std=0.25)(
        {"image": _exam(tmp_path, slices, 30, 30)})["image"]
    assert same.shape == (1, slices, 30, 30)  # num_slices None keeps the exam's count
    assert float(same.max()) == pytest.approx(2.0, abs=1e-5) and float(same.min()) == pytest.approx(-2.0, abs=1e-5)


def test_a_map_on_the_network_input_goes_back_to_the_loaded_grid(tmp_path):
    prep = knee_classification_preprocessing(image_size=10, num_slices=6)
    d = prep({"image": _exam(tmp_path, 10, 20, 20)})
    cam = torch.zeros(1, 6, 10, 10)
    cam[0, 2, 4:6, 4:6] = 1  # network slice 2 = loaded slice 4 (slices 2..7 kept of 10)
    back = Invertd("cam", prep, orig_keys="image", nearest_interp=False)({"image": d["image"], "cam": MetaTensor(cam)})
    back = back["cam"]
    assert back.shape == (1, 10, 20, 20)
    assert np.unravel_index(int(back.argmax()), back.shape[1:])[0] == 4
    assert back[0, :2].max() == 0 and back[0, 8:].max() == 0  # slices the network did not see
    rows, cols = np.nonzero(back[0, 4].numpy() > 0.5)
    assert rows.min() >= 7 and rows.max() <= 12 and cols.min() >= 7 and cols.max() <= 12  # pixels 8..11 in 20


def test_augmentation_gives_plain_tensors_and_keeps_the_shape(tmp_path):
    d = knee_classification_preprocessing(image_size=16, num_slices=8)({"image": _exam(tmp_path, 8)})
    aug = knee_classification_augmentation(prob=1.0)
    aug.set_random_state(0)
    out = aug(dict(d))["image"]
    assert type(out) is torch.Tensor and out.shape == (1, 8, 16, 16) and not torch.equal(out, d["image"].as_tensor())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_slices must be >= 1 or None, got 0"):
        knee_classification_preprocessing(num_slices=0)
    with pytest.raises(ValueError, match="std must be > 0"):
        knee_classification_preprocessing(std=0)
    with pytest.raises(ValueError, match="roi_crop needs roi_model_path"):
        knee_classification_preprocessing(roi_crop=True, roi_model_path=None)
