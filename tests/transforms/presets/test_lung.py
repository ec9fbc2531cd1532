"""The lung bundle's preprocessing and augmentation: image and mask stay aligned, masks stay binary."""

from __future__ import annotations

import pytest
import torch

from medplugin.data.lungseg import index_lungseg
from medplugin.data.synthetic.chest_xray import make_lung_seg_demo
from medplugin.transforms import lung_segmentation_augmentation, lung_segmentation_preprocessing


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    make_lung_seg_demo(root, n=6, size=96, seed=5)
    return index_lungseg(root, val_fraction=0.2, test_fraction=0.2)["training"][0]


def test_preprocessing_with_and_without_mask(entry):
    pre = lung_segmentation_preprocessing(image_size=48)
    d = pre(dict(entry))
    assert type(d["image"]) is torch.Tensor and tuple(d["image"].shape) == (1, 48, 48)
    assert abs(float(d["image"].mean())) < 1e-4 and abs(float(d["image"].std()) - 1) < 0.05  # standardised
    assert set(torch.unique(d["label"]).tolist()) == {0.0, 1.0} and d["path"] == entry["image"]
    # the lungs are the dark fields: the masked pixels are darker than the rest of the image
    assert d["image"][d["label"] > 0].mean() < d["image"][d["label"] == 0].mean() - 0.3
    only = pre({"image": entry["image"]})
    torch.testing.assert_close(only["image"], d["image"])
    assert "label" not in only
    with pytest.raises(ValueError, match="image_size must be at least 16"):
        lung_segmentation_preprocessing(image_size=8)
    with pytest.raises(ValueError, match="normalization must be one of"):
        lung_segmentation_preprocessing(normalization="minmax")


def test_augmentation_moves_image_and_mask_together(entry):
    d = lung_segmentation_preprocessing(image_size=48)(dict(entry))
    aug = lung_segmentation_augmentation(rotate_degrees=20, zoom=0.2, intensity=0.0, prob=1.0)
    aug.set_random_state(seed=3)
    out = aug(dict(d))
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
    assert not torch.equal(out["label"], d["label"])  # it moved
    # the dark lung fields moved with the mask
    assert out["image"][out["label"] > 0].mean() < out["image"][out["label"] == 0].mean() - 0.3
    with pytest.raises(ValueError, match="zoom must be in"):
        lung_segmentation_augmentation(zoom=1.5)
