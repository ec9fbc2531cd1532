"""LungCrop / SegmentLungs and their dictionary twins, with numpy, torch and MetaTensor input."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medplugin.errors import BadInputError
from medplugin.transforms import LungCrop, LungCropd, SegmentLungs, SegmentLungsd
from medplugin.transforms.chest import clean_lung_mask, lung_bounding_box
from tests.transforms.chest._tiny_model import synthetic_pairs, train_tiny_lung_model


def _mask(h=40, w=60, box=(10, 20, 30, 50)):
    m = np.zeros((h, w), np.uint8)
    m[box[0]:box[2], box[1]:box[3]] = 1
    return m


# ------------------------------------------------------------------------------------------------ LungCrop
@pytest.mark.parametrize("kind", ["numpy", "torch", "meta"])
def test_lung_crop_box_margin_and_types(kind):
    img = np.arange(3 * 40 * 60, dtype=np.float32).reshape(3, 40, 60)
    x = {"numpy": img, "torch": torch.as_tensor(img), "meta": MetaTensor(torch.as_tensor(img))}[kind]
    mask = _mask()  # rows 10..29, cols 20..49: box 20 x 30
    out = LungCrop(margin=0.1)(x, mask)
    assert type(out) is type(x)
    # 10% of 20 rows = 2, 10% of 30 columns = 3 on each side
    assert tuple(out.shape) == (3, 24, 36)
    np.testing.assert_array_equal(np.asarray(out), img[:, 8:32, 17:53])


def test_lung_crop_per_axis_margin_clips_to_image_and_keeps_mask():
    mask = _mask(box=(0, 55, 5, 60))
    crop = LungCrop(margin=(1.0, 0.0))
    out = crop(np.ones((1, 40, 60), np.float32), mask)
    assert crop.last_box == {"start": [0, 55], "end": [10, 60], "empty": False}
    assert out.shape == (1, 10, 5)
    # no channel, torch mask with a channel: same box
    out2 = LungCrop(margin=0)(torch.zeros(40, 60), torch.as_tensor(_mask())[None])
    assert tuple(out2.shape) == (20, 30)


def test_lung_crop_metatensor_affine_shifted():
    img = MetaTensor(torch.zeros(1, 40, 60), meta={"filename_or_obj": "a.png"})
    out = LungCrop(margin=0)(img, _mask())
    assert out.affine[0, -1].item() == 10 and out.affine[1, -1].item() == 20
    assert out.meta["filename_or_obj"] == "a.png"


def test_lung_crop_empty_mask(caplog):
    img = MetaTensor(torch.ones(1, 40, 60), meta={"filename_or_obj": "/d/x.png"})
    with caplog.at_level(logging.WARNING):
        out = LungCrop()(img, np.zeros((40, 60)))
    assert tuple(out.shape) == (1, 40, 60) and "empty lung mask" in caplog.text and "/d/x.png" in caplog.text
    with pytest.raises(BadInputError, match=r"/d/x.png: the lung mask is empty"):
        LungCrop(empty="raise")(img, np.zeros((40, 60)))


def test_lung_crop_argument_and_shape_errors():
    with pytest.raises(ValueError, match="empty must be one of"):
        LungCrop(empty="center")
    with pytest.raises(ValueError, match=r"margin must be one or two numbers >= 0.*-0.1"):
        LungCrop(margin=-0.1)
    with pytest.raises(ValueError, match="margin must be one or two"):
        LungCrop(margin=(0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match=r"mask's spatial shape \(40, 50\) differs from the image's \(40, 60\)"):
        LungCrop()(np.zeros((1, 40, 60)), np.zeros((40, 50)))
    with pytest.raises(ValueError, match="image must be"):
        LungCrop()(np.zeros((1, 1, 40, 60)), np.zeros((40, 60)))


def test_lung_cropd_crops_all_keys_and_stores_box():
    d = {"image": torch.rand(1, 40, 60), "label": torch.rand(1, 40, 60), "lung_mask": torch.as_tensor(_mask())[None]}
    out = LungCropd(keys=["image", "label"], margin=0.0)(d)
    assert out["image"].shape == out["label"].shape == (1, 20, 30)
    torch.testing.assert_close(out["label"], d["label"][:, 10:30, 20:50])
    assert out["lung_box"] == {"start": [10, 20], "end": [30, 50], "empty": False}
    assert out["lung_mask"].shape == (1, 40, 60)  # not in keys: untouched
    with pytest.raises(KeyError, match="mask key 'lungs' not in the data"):
        LungCropd(keys="image", mask_key="lungs")(d)


def test_lung_bounding_box_and_clean_mask():
    assert lung_bounding_box(np.zeros((5, 5))) is None
    b = lung_bounding_box(_mask())
    assert (b["x"], b["y"], b["width"], b["height"]) == (20, 10, 30, 20)
    assert b["area_fraction"] == pytest.approx(600 / 2400)
    m = np.zeros((30, 30), np.uint8)
    m[2:12, 2:12] = 1
    m[2:12, 15:25] = 1
    m[20, 20] = 1  # speck
    m[6, 6] = 0  # hole
    c = clean_lung_mask(m, keep_components=2)
    assert c[20, 20] == 0 and c[6, 6] == 1 and c.sum() == 200


# ------------------------------------------------------------------------------------------------ SegmentLungs
@pytest.fixture(scope="module")
def lung_model(tmp_path_factory):
    return train_tiny_lung_model(tmp_path_factory.mktemp("lungmodel"))


def _dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.integration  # lung_model trains a tiny lung U-Net
@pytest.mark.parametrize("kind", ["numpy", "torch", "meta"])
def test_segment_lungs_finds_the_lungs_at_the_image_size(lung_model, kind):
    images, masks = synthetic_pairs(3, 80, seed=123)  # other images, other size than training (32)
    seg = SegmentLungs(lung_model)
    for img, truth in zip(images, masks):
        arr = img[None].astype(np.float32)
        x = {"numpy": arr, "torch": torch.as_tensor(arr), "meta": MetaTensor(torch.as_tensor(arr), meta={"k": 1})}[kind]
        out = seg(x)
        assert type(out) is type(x) and tuple(out.shape) == (1, 80, 80)
        assert (out.dtype == np.uint8) if kind == "numpy" else (out.dtype == torch.uint8)
        assert _dice(out[0], truth) > 0.9
    if kind == "meta":
        assert out.meta["k"] == 1
    # (H, W) input and RGB input
    assert seg(images[0].astype(np.float32)).shape == (80, 80)
    rgb = np.repeat(images[0][None].astype(np.float32), 3, 0)
    assert _dice(seg(rgb)[0], masks[0]) > 0.9


@pytest.mark.integration  # lung_model trains a tiny lung U-Net
def test_segment_lungs_loads_once_and_pickles_without_network(lung_model):
    seg = SegmentLungs(lung_model)
    img = np.random.default_rng(0).uniform(0, 255, (1, 32, 48)).astype(np.float32)
    seg(img)
    net = seg._network
    seg(img)
    assert seg._network is net and seg.meta["arch"] == "lung_unet"
    clone = pickle.loads(pickle.dumps(seg))
    assert clone._network is None
    np.testing.assert_array_equal(clone(img), seg(img))


@pytest.mark.integration  # lung_model trains a tiny lung U-Net
def test_segment_lungsd_then_crop_contains_the_lungs(lung_model):
    images, masks = synthetic_pairs(1, 64, seed=7)
    d = {"image": MetaTensor(torch.as_tensor(images[0][None], dtype=torch.float32))}
    d = SegmentLungsd("image", model_path=lung_model)(d)
    assert d["lung_mask"].shape == (1, 64, 64)
    d["truth"] = torch.as_tensor(masks[0])[None]
    out = LungCropd(["image", "truth"], margin=0.05)(d)
    # the crop keeps (nearly) all true lung pixels and drops the image's margins
    assert out["truth"].sum() >= 0.98 * masks[0].sum()
    assert out["image"].shape[-1] < 64 and out["image"].shape[-2] < 64


@pytest.mark.integration  # lung_model trains a tiny lung U-Net
def test_segment_lungs_errors_name_the_file(lung_model, tmp_path):
    with pytest.raises(BadInputError, match=r"nowhere/model.pt: no trained lung segmentation model"):
        SegmentLungs(tmp_path / "nowhere" / "model.pt")(np.zeros((1, 32, 32)))
    alone = tmp_path / "alone" / "model.pt"
    alone.parent.mkdir()
    alone.write_bytes(lung_model.read_bytes())
    with pytest.raises(BadInputError, match=r"alone/model.json: model.json is missing"):
        SegmentLungs(alone)(np.zeros((1, 32, 32)))
    meta = json.loads(lung_model.with_suffix(".json").read_text())
    alone.with_suffix(".json").write_text(json.dumps({**meta, "network": {**meta["network"], "features": [8, 16, 64]}}))
    with pytest.raises(BadInputError, match=r"alone/model.pt: weights do not fit"):
        SegmentLungs(alone)(np.zeros((1, 32, 32)))
    alone.with_suffix(".json").write_text(json.dumps({**meta, "arch": "resnet50"}))
    with pytest.raises(BadInputError, match=r"cannot rebuild the lung segmentation network.*'resnet50'"):
        SegmentLungs(alone)(np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="keep_components"):
        SegmentLungs(lung_model, keep_components=0)
    with pytest.raises(ValueError, match=r"image must be .*\(2, 32, 32\)"):
        SegmentLungs(lung_model)(np.zeros((2, 32, 32)))
