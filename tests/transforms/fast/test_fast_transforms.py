"""ToUint8 (the decode cache's storage type) and BatchRandAugment (augmentation on the device, per batch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.transforms import Affine, Rotate

from medplugin.transforms import (
    BatchRandAugment,
    BatchRandAugmentd,
    ToUint8,
    ToUint8d,
    image_classification_augmentation,
)


@pytest.mark.parametrize("as_torch", [False, True])
def test_to_uint8_rounds_and_clips_numpy_and_torch(as_torch):
    x = np.array([[[-3.0, 0.4, 0.6, 127.5, 254.6, 300.0]]], dtype=np.float32)
    img = torch.as_tensor(x) if as_torch else x
    out = ToUint8()(img)
    assert isinstance(out, torch.Tensor) == as_torch
    got = np.asarray(out)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, [[[0, 0, 1, 128, 255, 255]]])  # round half to even: 127.5 -> 128
    d = ToUint8d(["image"])({"image": img, "label": 2})
    assert d["label"] == 2 and np.asarray(d["image"]).dtype == np.uint8


def _pattern(b=4, h=40, w=40):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(b, 1, h, w)
    x[:, :, 8:14, 24:30] = 1.0  # a planted bright block, upper right
    return x + 0.01 * torch.rand(b, 1, h, w, generator=g)


def test_probability_zero_is_the_identity():
    x = _pattern()
    out = BatchRandAugment(rotate_degrees=30, hflip=True, vflip=True, zoom=(0.5, 2), intensity=0.5, prob=0.0)(x)
    assert torch.equal(out, x) and out is not x


def test_flips_alone_are_exact():
    x = _pattern()
    aug = BatchRandAugment(rotate_degrees=0, hflip=True, vflip=True, zoom=None, intensity=0, prob=1.0)
    assert torch.equal(aug(x), torch.flip(x, dims=[-2, -1]))


def test_rotation_matches_monai_rotate_per_image():
    """Each image is rotated by its own drawn angle, in MONAI's direction and geometry."""
    x = _pattern(b=6, h=40, w=48)
    aug = BatchRandAugment(rotate_degrees=40, hflip=False, vflip=False, zoom=None, intensity=0, prob=1.0)
    aug.set_random_state(3)
    out = aug(x)
    angles = aug._params["angle"]
    assert len(set(np.round(angles, 6))) == 6 and np.all(np.abs(angles) <= math.radians(40))
    for i in range(6):
        ref = Rotate(angle=float(angles[i]), keep_size=True, mode="bilinear", padding_mode="zeros",
                     align_corners=False)(x[i])
        np.testing.assert_allclose(out[i].numpy(), np.asarray(ref), atol=2e-3)


def test_zoom_magnifies_about_the_centre_as_monai_affine_does():
    x = _pattern(b=3)
    aug = BatchRandAugment(rotate_degrees=0, hflip=False, vflip=False, zoom=(1.2, 1.5), intensity=0, prob=1.0)
    aug.set_random_state(1)
    out = aug(x)
    for i, z in enumerate(aug._params["zoom"]):
        assert 1.2 <= z <= 1.5
        ref = Affine(scale_params=(float(1 / z), float(1 / z)), padding_mode="zeros", mode="bilinear", image_only=True)(
            x[i]
        )
        np.testing.assert_allclose(out[i].numpy(), np.asarray(ref), atol=1e-4)
        assert (out[i] > 0.5).sum() > 1.3 * (x[i] > 0.5).sum()  # zoom above 1 magnifies (as RandZoom)


def test_intensity_is_a_per_image_scale_and_shift_within_range():
    x = _pattern(b=8)
    aug = BatchRandAugment(rotate_degrees=0, hflip=False, zoom=None, intensity=0.1, prob=1.0)
    out = aug(x)
    for i in range(8):
        a, b = np.polyfit(x[i].flatten().numpy(), out[i].flatten().numpy(), 1)
        assert 0.9 - 1e-4 <= a <= 1.1 + 1e-4 and -0.1 - 1e-4 <= b <= 0.1 + 1e-4
    assert len({round(float(o.mean()), 5) for o in out}) == 8  # drawn per image


def test_same_seed_same_batch_and_dictionary_moves_image_and_mask_together():
    x = _pattern(b=5)
    kw = dict(rotate_degrees=20, hflip=True, zoom=(0.9, 1.1), intensity=0.0, prob=0.5)
    a = BatchRandAugment(**kw).set_random_state(7)(x)
    b = BatchRandAugment(**kw).set_random_state(7)(x)
    assert torch.equal(a, b)
    d = BatchRandAugmentd(["image", "mask"], **kw).set_random_state(7)({"image": x, "mask": x.clone(), "label": 1})
    assert torch.equal(d["image"], d["mask"]) and torch.equal(d["image"], a) and d["label"] == 1


def test_same_augmentation_as_the_per_image_preset_on_average():
    """Same settings as image_classification_augmentation: same share of changed images (prob 0.5 per step)."""
    x = _pattern(b=150, h=12, w=12)
    out = BatchRandAugment(rotate_degrees=10, hflip=True, zoom=(0.9, 1.1), intensity=0.1, prob=0.5).set_random_state(0)(
        x
    )
    per_item = image_classification_augmentation(rotate_degrees=10, hflip=True, zoom=(0.9, 1.1), intensity=0.1)
    per_item.set_random_state(0)
    ref = torch.stack([torch.as_tensor(np.asarray(per_item({"image": xi})["image"])) for xi in x])
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    changed_ref = (ref - x).abs().flatten(1).amax(1) > 1e-6
    assert abs(changed.float().mean() - changed_ref.float().mean()) < 0.08  # 1 - 0.5**5 = 0.97 for both


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\), got ndarray of shape \(1, 8, 8\)"):
        BatchRandAugment()(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="prob must be in"):
        BatchRandAugment(prob=2)
    with pytest.raises(ValueError, match="zoom must be"):
        BatchRandAugment(zoom=(1.2, 0.8))
