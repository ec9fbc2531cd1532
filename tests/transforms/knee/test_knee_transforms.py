"""Tests of the knee MRI transforms: loading, crop to a mask, ACL-region segmentation from a saved model."""

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
from medplugin.transforms import CropToMask, CropToMaskd, LoadKneeVolume, LoadKneeVolumed, SegmentROI, SegmentROId
from medplugin.transforms.knee import knee_intensity_scaler, mask_bounding_box

SPACING = np.array([3.0, 0.5, 0.5])  # (slice, row, col) mm of KNEE_DEMO_AFFINE after read_knee_volume


@pytest.fixture(scope="module")
def phantom():
    return synthetic_knee((16, 32, 32), 2, rng=3)


def _as(kind, arr):
    return torch.as_tensor(arr) if kind == "torch" else np.asarray(arr)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("channel", [False, True])
def test_crop_contains_mask_with_voxel_margin(phantom, kind, channel):
    vol, mask = phantom["volume"], phantom["mask"]
    img = _as(kind, vol[None] if channel else vol)
    crop = CropToMask(margin=(1, 2, 3))
    out = crop(img, _as(kind, mask))
    assert isinstance(out, torch.Tensor if kind == "torch" else np.ndarray)
    s0, r0, c0, s1, r1, c1 = phantom["bbox"]
    start, end = crop.last_box["start"], crop.last_box["end"]
    assert start == [max(s0 - 1, 0), max(r0 - 2, 0), max(c0 - 3, 0)]
    assert end == [min(s1 + 1, 16), min(r1 + 2, 32), min(c1 + 3, 32)]
    expect_shape = tuple(e - s for s, e in zip(start, end))
    assert tuple(out.shape) == ((1,) if channel else ()) + expect_shape
    # the crop is the same voxels, and holds the whole mask
    np.testing.assert_array_equal(np.asarray(out).reshape(expect_shape),
                                  vol[start[0]:end[0], start[1]:end[1], start[2]:end[2]])
    cropped_mask = CropToMask(margin=(1, 2, 3))(mask, mask)
    assert cropped_mask.sum() == mask.sum()


def test_crop_margin_in_mm_uses_the_affine_and_shifts_it(phantom):
    vol, mask = phantom["volume"], phantom["mask"]
    affine = torch.as_tensor(np.diag([*SPACING, 1.0]))
    img = MetaTensor(torch.as_tensor(vol)[None], affine=affine)
    crop = CropToMask(margin=3.0, margin_unit="mm")  # 3 mm: 1 slice, 6 pixels in plane
    out = crop(img, mask[None])
    s0, r0, c0, s1, r1, c1 = phantom["bbox"]
    assert crop.last_box["start"] == [max(s0 - 1, 0), max(r0 - 6, 0), max(c0 - 6, 0)]
    assert crop.last_box["end"] == [min(s1 + 1, 16), min(r1 + 6, 32), min(c1 + 6, 32)]
    assert isinstance(out, MetaTensor)
    # voxel (0,0,0) of the crop is the same point in mm as voxel `start` of the input
    np.testing.assert_allclose(out.affine[:3, 3].numpy(), SPACING * np.array(crop.last_box["start"]))
    # the same margin from an explicit spacing on a plain array
    plain = CropToMask(margin=3.0, margin_unit="mm", spacing=SPACING.tolist())
    plain(vol, mask)
    assert plain.last_box == crop.last_box
    with pytest.raises(ValueError, match="spacing"):
        CropToMask(margin=3.0, margin_unit="mm")(vol, mask)


def test_crop_min_size_and_empty_mask_behaviour(phantom):
    vol, mask = phantom["volume"], phantom["mask"]
    out = CropToMask(min_size=(8, 24, 24))(vol, mask)
    assert out.shape == (8, 24, 24)
    big = CropToMask(min_size=(40, 40, 40))(vol, mask)  # larger than the volume: the whole volume, no padding
    assert big.shape == vol.shape
    empty = np.zeros_like(mask)
    np.testing.assert_array_equal(CropToMask(margin=2)(vol, empty), vol)  # default "full"
    centre = CropToMask(empty="center", min_size=(4, 8, 8))
    assert centre(vol, empty).shape == (4, 8, 8) and centre.last_box["start"] == [6, 12, 12]
    named = MetaTensor(torch.as_tensor(vol)[None], meta={"filename_or_obj": "/data/knee_007.nii.gz"})
    with pytest.raises(BadInputError, match=r"knee_007\.nii\.gz: the ROI mask is empty"):
        CropToMask(empty="raise")(named, empty)


def test_crop_argument_and_shape_errors(phantom):
    with pytest.raises(ValueError, match="margin_unit must be 'voxel' or 'mm', got 'cm'"):
        CropToMask(margin_unit="cm")
    with pytest.raises(ValueError, match="margin must be one or three numbers >= 0, got -1"):
        CropToMask(margin=-1)
    with pytest.raises(ValueError, match="empty must be one of"):
        CropToMask(empty="pad")
    with pytest.raises(ValueError, match=r"mask's spatial shape \(16, 32, 30\) differs from the volume's \(16, 32, 32\)"):
        CropToMask()(phantom["volume"], phantom["mask"][:, :, :30])


def test_crop_dictionary_crops_image_and_label_alike_and_records_box_in_mm(tmp_path):
    make_knee_nifti_demo(tmp_path, n=1, shape=(16, 32, 32), seed=4)
    d = LoadKneeVolumed(["image", "label"])({"image": tmp_path / "exams/knee_000.nii.gz",
                                             "label": tmp_path / "masks/knee_000.nii.gz"})
    np.testing.assert_allclose(np.linalg.norm(d["image"].affine[:3, :3].numpy(), axis=0), SPACING)
    full_mask = d["label"].clone()
    out = CropToMaskd(["image", "label"], mask_key="label", margin=1.5, margin_unit="mm")(d)
    box = out["roi_box"]
    assert out["image"].shape == out["label"].shape
    assert out["label"].sum() == full_mask.sum()
    # the corners in mm are the input affine applied to the voxel corners
    affine = d["image"].affine.numpy()
    start_mm = affine[:3, :3] @ np.array(box["start"]) + affine[:3, 3]
    np.testing.assert_allclose(box["start_mm"], start_mm, atol=1e-3)
    assert box["spacing_mm"] == SPACING.tolist()
    with pytest.raises(KeyError, match="mask key 'roi_mask' not in the data"):
        CropToMaskd(["image"])({"image": d["image"]})


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


# ------------------------------------------------------------------------------------------ segmentation
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
    x = knee_intensity_scaler(0.5, 99.5)(torch.as_tensor(vol)[None])[None].float()
    with torch.no_grad():
        return sliding_window_inference(x, [8, 16, 16], 2, net, overlap=0.25, mode="gaussian").argmax(1)[0].numpy()


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_segment_roi_runs_the_saved_network_at_the_volume_size(saved_model, phantom, kind):
    path, net = saved_model
    vol = phantom["volume"][:, :30, :28]  # not a multiple of the patch: the sliding window pads and crops
    seg = SegmentROI(path, keep_largest=False)
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
    raw = SegmentROI(path, keep_largest=False)(phantom["volume"])
    labels, n = ndimage.label(raw, structure=cube)
    assert n > 1  # the untrained network leaves scattered components: the test below means something
    out = SegmentROI(path, keep_largest=True)(phantom["volume"])
    assert ndimage.label(out, structure=cube)[1] == 1
    assert out.sum() == np.bincount(labels.ravel())[1:].max()


def test_segment_then_crop_dictionary_chain(saved_model, tmp_path):
    path, net = saved_model
    make_knee_nifti_demo(tmp_path, n=1, shape=(16, 32, 32), seed=2)
    d = LoadKneeVolumed("image")({"image": tmp_path / "exams/knee_000.nii.gz"})
    d = SegmentROId("image", model_path=path, keep_largest=False)(d)
    assert isinstance(d["roi_mask"], MetaTensor) and d["roi_mask"].shape == d["image"].shape
    np.testing.assert_array_equal(d["roi_mask"][0].numpy(), _reference_mask(net, d["image"][0].numpy()))
    box = mask_bounding_box(d["roi_mask"])
    out = CropToMaskd("image", mask_key="roi_mask", margin=1)(d)
    if box is not None:
        assert all(s <= b for s, b in zip(out["roi_box"]["start"], box[0]))
        assert all(e >= b for e, b in zip(out["roi_box"]["end"], box[1]))


def test_segment_roi_refuses_missing_or_mismatched_models(tmp_path, saved_model, phantom):
    with pytest.raises(BadInputError, match="no trained segmentation model here"):
        SegmentROI(tmp_path / "model.pt")(phantom["volume"])
    torch.save(knee_unet3d(features=(4, 8, 16)).state_dict(), tmp_path / "model.pt")
    with pytest.raises(BadInputError, match="model.json is missing"):
        SegmentROI(tmp_path / "model.pt")(phantom["volume"])
    (tmp_path / "model.json").write_text(json.dumps({**META, "network": {"features": [8, 16, 32]}}))
    with pytest.raises(BadInputError, match="weights do not fit"):
        SegmentROI(tmp_path / "model.pt")(phantom["volume"])
    (tmp_path / "model.json").write_text(json.dumps({**META, "arch": "resnet18"}))
    with pytest.raises(BadInputError, match="only 'knee_unet3d'"):
        SegmentROI(tmp_path / "model.pt")(phantom["volume"])
    with pytest.raises(ValueError, match=r"single-channel \(1, slices, H, W\), got shape \(2, 16, 32, 32\)"):
        SegmentROI(saved_model[0])(np.zeros((2, 16, 32, 32), np.float32))
    with pytest.raises(ValueError, match="overlap must be in"):
        SegmentROI(saved_model[0], overlap=1.0)
