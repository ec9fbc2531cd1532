"""The fundus field-of-view crop on synthetic fundus photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplugin.data.synthetic.fundus import synthetic_fundus
from medplugin.errors import BadInputError
from medplugin.transforms import FundusFOVCrop


def _chw(d):
    return np.ascontiguousarray(d["image"].transpose(2, 0, 1))


# ------------------------------------------------------------------------------------------ detection

def _bordered_notched(size=128):
    f = synthetic_fundus(size, rng=3)
    img = f["image"].astype(np.float32)
    cy, cx, r = f["fov"]
    yy, xx = np.mgrid[:size, :size]
    notch = (np.abs(yy - (cy - r + 4)) < 6) & (np.abs(xx - cx) < 8)  # a black notch at the top of the rim
    img[notch] = 0
    canvas = np.zeros((size, size + 50, 3), np.float32)  # black borders left and right (wide photograph)
    canvas[:, 30 : 30 + size] = img
    canvas = canvas[6:-6]  # FOV truncated at top and bottom
    return canvas.transpose(2, 0, 1).copy(), (cy - 6, cx + 30, r)


def test_fov_crop_finds_circle_with_borders_and_notch():
    img, (cy, cx, r) = _bordered_notched()
    crop = FundusFOVCrop(spatial_size=96, return_mask=True)
    fy, fx, fr = crop.find_fov(img)
    assert abs(fy - cy) <= 0.03 * r and abs(fx - cx) <= 0.03 * r and abs(fr - r) <= 0.03 * r
    out, mask = crop(img)
    assert out.shape == (3, 96, 96) and mask.shape == (1, 96, 96) and out.dtype == np.float32
    assert np.all(out[:, mask[0] == 0] == 0)
    # the circle fills the square: corners are outside, the middle row spans almost all of it
    assert mask[0, 0, 0] == 0 and mask[0, 48].sum() >= 92
    assert out[1, 40:56, 40:56].mean() > 20  # retina content is kept
    ot = FundusFOVCrop(spatial_size=96)(torch.as_tensor(img))
    assert isinstance(ot, torch.Tensor)
    np.testing.assert_allclose(ot.numpy(), out, atol=1e-4)


def test_fov_crop_channels_and_bad_input():
    f = synthetic_fundus(64, rng=0)
    rgb = _chw(f).astype(np.float32)
    gray = rgb.mean(0, keepdims=True)
    out = FundusFOVCrop(spatial_size=48)(gray)  # 1 channel is repeated to RGB
    assert out.shape == (3, 48, 48) and np.allclose(out[0], out[1]) and np.allclose(out[1], out[2])
    rgba = np.concatenate([rgb, np.full_like(rgb[:1], 255)])
    np.testing.assert_allclose(FundusFOVCrop(48)(rgba), FundusFOVCrop(48)(rgb))
    with pytest.raises(ValueError, match=r"got shape \(2, 64, 64\)"):
        FundusFOVCrop(48)(rgb[:2])
    with pytest.raises(ValueError, match=r"got shape \(64, 64\)"):
        FundusFOVCrop(48)(rgb[0])
    with pytest.raises(BadInputError, match="no fundus region found"):
        FundusFOVCrop(48)(np.zeros((3, 64, 64), np.float32))
    with pytest.raises(ValueError, match=r"spatial_size must be an int >= 8, got 4"):
        FundusFOVCrop(4)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got 1.5"):
        FundusFOVCrop(64, threshold=1.5)


# --------------------------------------------------------------------------------------- Graham
