"""The fundus bundle's preprocessing presets: channels per mode, colour conversion, augmentation, normalisation."""

import numpy as np
import pytest
import torch
from PIL import Image

from medplugin.data.synthetic.fundus import synthetic_fundus
from medplugin.transforms import (
    FundusPreprocessd,
    fundus_augmentation,
    fundus_classification_preprocessing,
    fundus_normalization,
)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    f = synthetic_fundus(size=96, n_dark=3, n_bright=3, rng=0)
    path = tmp_path_factory.mktemp("fundus") / "eye.png"
    Image.fromarray(f["image"]).save(path)
    return path


@pytest.mark.parametrize("mode, annotate", [("original", "draw"), ("enhanced", "draw"), ("annotated", "draw"),
                                            ("annotated", "channels")])
def test_preprocessing_gives_out_channels_in_unit_range(photo, mode, annotate):
    out = fundus_classification_preprocessing(48, mode, annotate)({"image": str(photo)})
    img = out["image"]
    assert isinstance(img, torch.Tensor) and img.dtype == torch.float32
    assert img.shape == (FundusPreprocessd.out_channels(mode, annotate), 48, 48)
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert img[:, 0, 0].abs().sum() == 0  # the corner is outside the field of view: masked
    assert out["path"] == str(photo)


def test_gray_and_rgba_photographs_are_converted(photo, tmp_path):
    with Image.open(photo) as im:
        im.convert("L").save(tmp_path / "gray.png")
        rgba = im.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(tmp_path / "rgba.png")
    pre = fundus_classification_preprocessing(48, "original")
    gray = pre({"image": str(tmp_path / "gray.png")})["image"]
    assert gray.shape == (3, 48, 48) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    np.testing.assert_allclose(pre({"image": str(tmp_path / "rgba.png")})["image"], pre({"image": str(photo)})["image"])


def test_augmentation_keeps_shape_and_varies_and_normalisation_checks_lengths():
    x = {"image": torch.rand(5, 32, 32)}
    aug = fundus_augmentation(32, prob=1.0)
    aug.set_random_state(0)
    a, b = aug({"image": x["image"].clone()})["image"], aug({"image": x["image"].clone()})["image"]
    assert a.shape == b.shape == (5, 32, 32) and not torch.allclose(a, b)
    norm = fundus_normalization([0.5] * 5, [0.25] * 5)
    expected = (x["image"] - 0.5) / 0.25
    np.testing.assert_allclose(norm({"image": x["image"].clone()})["image"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="mean and std need the same length"):
        fundus_normalization([0.5] * 3, [0.25] * 5)
    with pytest.raises(ValueError, match="shift must be in"):
        fundus_augmentation(32, shift=0.7)
