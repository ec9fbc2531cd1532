"""The knee classifier's input transform: fixed slice count, recorded geometry, CAMs put back on the file grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplugin.transforms.knee.classification import (
    KneeClassificationInput,
    KneeClassificationInputd,
    cam_to_input_grid,
    knee_classification_preprocessing,
)


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("slices, expect", [(12, (2, 0, 8)), (5, (0, 1, 5)), (8, (0, 0, 8))])
def test_slice_count_is_fixed_and_recorded(as_torch, slices, expect):
    vol = np.random.default_rng(0).random((1, slices, 40, 30)).astype(np.float32) * 1000
    x, geom = KneeClassificationInput(image_size=16, num_slices=8, mean=0.5, std=0.25)(
        torch.as_tensor(vol) if as_torch else vol)
    assert isinstance(x, torch.Tensor) and x.shape == (1, 8, 16, 16)
    assert geom.tolist() == [slices, 40, 30, *expect]
    src, dst, count = expect
    if dst:  # padded slices hold the value of 0 after normalisation
        assert torch.allclose(x[0, 0], torch.full((16, 16), -2.0))
    assert float(x.max()) <= (1 - 0.5) / 0.25 + 1e-5  # intensities scaled to [0, 1] before normalisation
    same, _ = KneeClassificationInput(image_size=30, num_slices=None, mean=0.5, std=0.25)(vol[..., :30, :])
    assert same.shape == (1, slices, 30, 30)  # num_slices None keeps the exam's count
    assert float(same.max()) == pytest.approx(2.0, abs=1e-5) and float(same.min()) == pytest.approx(-2.0, abs=1e-5)


def test_cam_goes_back_to_the_loaded_grid():
    vol = np.zeros((1, 10, 20, 20), np.float32)
    vol[0, 3:7, 5:15, 5:15] = 1
    d = KneeClassificationInputd(keys="image", image_size=10, num_slices=6)({"image": vol})
    assert d["geometry"].tolist() == [10, 20, 20, 0, 0, 0, 10, 20, 20, 2, 0, 6]
    cam = torch.zeros(6, 10, 10)
    cam[2, 4:6, 4:6] = 1  # network slice 2 = input slice 4
    back = cam_to_input_grid(cam, d["geometry"])
    assert back.shape == (10, 20, 20)
    assert np.unravel_index(back.argmax(), back.shape)[0] == 4 and back[:2].max() == 0 and back[8:].max() == 0
    with pytest.raises(ValueError, match="12 numbers"):
        cam_to_input_grid(cam, [1, 2, 3])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_slices must be >= 1 or None, got 0"):
        KneeClassificationInput(num_slices=0)
    with pytest.raises(ValueError, match="expected a \\(1, slices, H, W\\)"):
        KneeClassificationInput()(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="roi_crop needs roi_model_path"):
        knee_classification_preprocessing(roi_crop=True, roi_model_path=None)
