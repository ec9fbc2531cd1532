"""SegmentWithModel and SegmentWithModeld: a segmentation bundle's model.pt + model.json, 2D (the lung U-Net, whole
image) and 3D (the knee 3D U-Net, sliding window), numpy, torch and MetaTensor input, MONAI's mask cleaning."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from medplugin.data.synthetic.knee import make_knee_nifti_demo, synthetic_knee
from medplugin.errors import BadInputError
from medplugin.networks import knee_unet3d
from medplugin.transforms import CropToMaskd, LoadKneeVolumed, SegmentWithModel, SegmentWithModeld, percentile_scaler
from medplugin.transforms.utils import mask_bounding_box
from tests.transforms.segment._tiny_model import synthetic_pairs, train_tiny_lung_model


@pytest.fixture(scope="module")
def phantom():
    return synthetic_knee((16, 32, 32), 2, rng=3)


def _as(kind, arr):
    return torch.as_tensor(arr) if kind == "torch" else np.asarray(arr)


@pytest.fixture(scope="module")
def lung_model(tmp_path_factory):
    return train_tiny_lung_model(tmp_path_factory.mktemp("lungmodel"))


def _dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("kind", ["numpy", "torch", "meta"])
def test_segment_lungs_finds_the_lungs_at_the_image_size(lung_model, kind):
    images, masks = synthetic_pairs(3, 80, seed=123)  # other images, other size than training (32)
    seg = SegmentWithModel(lung_model, keep_components=2)
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


def test_segment_lungs_loads_once_and_pickles_without_network(lung_model):
    seg = SegmentWithModel(lung_model, keep_components=2)
    img = np.random.default_rng(0).uniform(0, 255, (1, 32, 48)).astype(np.float32)
    seg(img)
    net = seg._network
    seg(img)
    assert seg._network is net and seg.meta["arch"] == "lung_unet"
    clone = pickle.loads(pickle.dumps(seg))
    assert clone._network is None
    np.testing.assert_array_equal(clone(img), seg(img))


def test_segment_lungsd_then_crop_contains_the_lungs(lung_model):
    images, masks = synthetic_pairs(1, 64, seed=7)
    d = {"image": MetaTensor(torch.as_tensor(images[0][None], dtype=torch.float32))}
    d = SegmentWithModeld("image", model_path=lung_model, mask_key="lung_mask", keep_components=2)(d)
    assert d["lung_mask"].shape == (1, 64, 64)
    d["truth"] = torch.as_tensor(masks[0])[None]
    out = CropToMaskd(["image", "truth"], mask_key="lung_mask", margin=0.05, margin_unit="fraction")(d)
    # the crop keeps (nearly) all true lung pixels and drops the image's margins
    assert out["truth"].sum() >= 0.98 * masks[0].sum()
    assert out["image"].shape[-1] < 64 and out["image"].shape[-2] < 64


def test_segment_lungs_errors_name_the_file(lung_model, tmp_path):
    with pytest.raises(BadInputError, match=r"nowhere/model.pt: no trained lung segmentation model"):
        SegmentWithModel(tmp_path / "nowhere" / "model.pt", model_name="lung segmentation")(np.zeros((1, 32, 32)))
    alone = tmp_path / "alone" / "model.pt"
    alone.parent.mkdir()
    alone.write_bytes(lung_model.read_bytes())
    with pytest.raises(BadInputError, match=r"alone/model.json: model.json is missing"):
        SegmentWithModel(alone, model_name="lung segmentation")(np.zeros((1, 32, 32)))
    meta = json.loads(lung_model.with_suffix(".json").read_text())
    alone.with_suffix(".json").write_text(json.dumps({**meta, "network": {**meta["network"], "features": [8, 16, 64]}}))
    with pytest.raises(BadInputError, match=r"alone/model.pt: weights do not fit"):
        SegmentWithModel(alone, model_name="lung segmentation")(np.zeros((1, 32, 32)))
    alone.with_suffix(".json").write_text(json.dumps({**meta, "arch": "resnet50"}))
    with pytest.raises(BadInputError, match=r"cannot rebuild the lung segmentation network.*'resnet50'"):
        SegmentWithModel(alone, model_name="lung segmentation")(np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="keep_components"):
        SegmentWithModel(lung_model, keep_components=0)
    with pytest.raises(ValueError, match=r"image must be .*\(2, 32, 32\)"):
        SegmentWithModel(lung_model)(np.zeros((2, 32, 32)))


META = {"arch": "knee_unet3d", "in_channels": 1, "class_names": ["background", "acl"],
        "network": {"features": [4, 8, 16]}, "roi_size": [8, 16, 16], "intensity_percentiles": [0.5, 99.5]}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("seg_model")
    torch.manual_seed(0)
    net = knee_unet3d(features=(4, 8, 16))
    torch.save(net.state_dict(), d / "model.pt")
    (d / "model.json").write_text(json.dumps(META))
    return d / "model.pt", net.eval()


def _reference_mask(net, vol):
    x = percentile_scaler(0.5, 99.5)(torch.as_tensor(vol)[None])[None].float()
    with torch.no_grad():
        return sliding_window_inference(x, [8, 16, 16], 2, net, overlap=0.25, mode="gaussian").argmax(1)[0].numpy()


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_segment_roi_runs_the_saved_network_at_the_volume_size(saved_model, phantom, kind):
    path, net = saved_model
    vol = phantom["volume"][:, :30, :28]  # not a multiple of the patch: the sliding window pads and crops
    seg = SegmentWithModel(path, keep_components=None, fill_holes=False)
    out = seg(_as(kind, vol))
    assert isinstance(out, torch.Tensor if kind == "torch" else np.ndarray)
    assert tuple(out.shape) == vol.shape and out.dtype in (np.uint8, torch.uint8)
    np.testing.assert_array_equal(np.asarray(out), _reference_mask(net, vol))
    chan = seg(_as(kind, vol[None]))
    assert tuple(chan.shape) == (1, *vol.shape)
    # pickles without the network (DataLoader workers) and gives the same answer after loading its own
    again = pickle.loads(pickle.dumps(seg))
    assert again._network is None
    np.testing.assert_array_equal(np.asarray(again(_as(kind, vol))), np.asarray(out))


def test_segment_roi_keep_largest_leaves_one_component(saved_model, phantom):
    from scipy import ndimage

    path, _ = saved_model
    cube = np.ones((3, 3, 3), bool)  # 26-connectivity
    raw = SegmentWithModel(path, keep_components=None, fill_holes=False)(phantom["volume"])
    labels, n = ndimage.label(raw, structure=cube)
    assert n > 1  # the untrained network leaves scattered components: the test below means something
    out = SegmentWithModel(path, keep_components=1, fill_holes=False)(phantom["volume"])
    assert ndimage.label(out, structure=cube)[1] == 1
    assert out.sum() == np.bincount(labels.ravel())[1:].max()


def test_segment_then_crop_dictionary_chain(saved_model, tmp_path):
    path, net = saved_model
    make_knee_nifti_demo(tmp_path, n=1, shape=(16, 32, 32), seed=2)
    d = LoadKneeVolumed("image")({"image": tmp_path / "exams/knee_000.nii.gz"})
    d = SegmentWithModeld("image", model_path=path, keep_components=None, fill_holes=False)(d)
    assert isinstance(d["roi_mask"], MetaTensor) and d["roi_mask"].shape == d["image"].shape
    np.testing.assert_array_equal(d["roi_mask"][0].numpy(), _reference_mask(net, d["image"][0].numpy()))
    box = mask_bounding_box(d["roi_mask"][0].numpy() > 0)
    out = CropToMaskd("image", mask_key="roi_mask", margin=1)(d)
    if box is not None:
        assert all(s <= b for s, b in zip(out["roi_box"]["start"], box[0]))
        assert all(e >= b for e, b in zip(out["roi_box"]["end"], box[1]))


def test_segment_roi_refuses_missing_or_mismatched_models(tmp_path, saved_model, phantom):
    with pytest.raises(BadInputError, match="no trained segmentation model here"):
        SegmentWithModel(tmp_path / "model.pt")(phantom["volume"])
    torch.save(knee_unet3d(features=(4, 8, 16)).state_dict(), tmp_path / "model.pt")
    with pytest.raises(BadInputError, match="model.json is missing"):
        SegmentWithModel(tmp_path / "model.pt")(phantom["volume"])
    (tmp_path / "model.json").write_text(json.dumps({**META, "network": {"features": [8, 16, 32]}}))
    with pytest.raises(BadInputError, match="weights do not fit"):
        SegmentWithModel(tmp_path / "model.pt")(phantom["volume"])
    (tmp_path / "model.json").write_text(json.dumps({**META, "arch": "resnet18"}))
    with pytest.raises(BadInputError, match="only 'knee_unet3d'"):
        SegmentWithModel(tmp_path / "model.pt")(phantom["volume"])
    with pytest.raises(ValueError, match=r"single-channel \(1, slices, H, W\), got shape \(2, 16, 32, 32\)"):
        SegmentWithModel(saved_model[0])(np.zeros((2, 16, 32, 32), np.float32))
    with pytest.raises(ValueError, match="overlap must be in"):
        SegmentWithModel(saved_model[0], overlap=1.0)
