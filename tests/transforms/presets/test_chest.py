"""The chest X-ray classifier's preprocessing (with and without the lung crop) and its collate function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medplugin.data.synthetic.chest_xray import synthetic_chest_xray
from medplugin.transforms import NO_CROP_BOX, CropBoxToTensord, chest_xray_preprocessing, collate_with_defaults


def _png(tmp_path, size=64, seed=0):
    s = synthetic_chest_xray(size=size, rng=seed)
    p = tmp_path / f"cxr{seed}.png"
    Image.fromarray(s["image"]).save(p)
    return p, s


def test_preprocessing_image_and_label(tmp_path):
    p, _ = _png(tmp_path)
    t = chest_xray_preprocessing(32, 1, [0.45], [0.226])
    out = t({"image": str(p), "label": [0.0] * 13 + [1.0]})
    assert out["image"].shape == (1, 32, 32) and out["image"].dtype == torch.float32
    assert out["label"].dtype == torch.float32 and out["label"].shape == (14,) and out["label"][-1] == 1
    assert out["path"] == str(p) and "crop_box" not in out
    rgb = chest_xray_preprocessing(32, 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])({"image": str(p)})
    assert rgb["image"].shape == (3, 32, 32) and "label" not in rgb  # inference data has no label
    with pytest.raises(ValueError, match="lung_model_path"):
        chest_xray_preprocessing(32, lung_crop=True)
    with pytest.raises(ValueError, match="mean and std"):
        chest_xray_preprocessing(32, 1, [0.5, 0.5], [0.2, 0.2])


@pytest.mark.integration  # trains a tiny lung U-Net
def test_lung_crop_cuts_to_the_lungs(tmp_path):
    from tests.transforms.segment._tiny_model import train_tiny_lung_model

    model = train_tiny_lung_model(tmp_path / "lung", size=32, steps=80)
    p, s = _png(tmp_path, size=64, seed=3)
    out = chest_xray_preprocessing(32, 1, lung_crop=True, lung_model_path=str(model), lung_margin=0.05)(
        {"image": str(p)}
    )
    r0, c0, r1, c1, h, w = out["crop_box"].tolist()
    assert (h, w) == (64, 64) and out["image"].shape == (1, 32, 32)
    rows, cols = np.nonzero(s["lung_mask"])
    # the crop holds (nearly) all of the true lungs and is much smaller than the image
    assert r0 <= rows.min() + 2 and r1 >= rows.max() - 1 and c0 <= cols.min() + 2 and c1 >= cols.max() - 1
    assert (r1 - r0) * (c1 - c0) < 0.8 * 64 * 64
    assert "lung_mask" not in out and "lung_box" not in out


def test_crop_box_to_tensor_numpy_and_torch_and_collate():
    d = CropBoxToTensord()({"image": np.zeros((1, 8, 8)), "lung_box": {"start": [1, 2], "end": [7, 8], "empty": False},
                            "_loaded_shape": (10, 12)})
    assert d["crop_box"].tolist() == [1, 2, 7, 8, 10, 12]
    d2 = CropBoxToTensord()({"image": torch.zeros(1, 8, 8)})
    assert "crop_box" not in d2
    batch = collate_with_defaults()(
        [
            {"image": torch.zeros(1, 4, 4), "error": "", "crop_box": torch.tensor([0, 0, 4, 4, 4, 4])},
            {"image": torch.zeros(1, 4, 4), "error": "x"},
        ]
    )
    assert batch["crop_box"].tolist() == [[0, 0, 4, 4, 4, 4], list(NO_CROP_BOX)]
