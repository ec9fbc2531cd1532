"""CropToMask and CropToMaskd: the one crop-to-mask (2D lung fields, 3D ACL region), numpy, torch and MetaTensor
input, margins relative to the box, in voxels or in mm, empty masks, and its inverse."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medplugin.data.synthetic.knee import make_knee_nifti_demo, synthetic_knee
from medplugin.errors import BadInputError
from medplugin.transforms import CropToMask, CropToMaskd, LoadKneeVolumed

SPACING = np.array([3.0, 0.5, 0.5])  # (slice, row, col) mm of KNEE_DEMO_AFFINE after read_knee_volume


def _mask(h=40, w=60, box=(10, 20, 30, 50)):
    m = np.zeros((h, w), np.uint8)
    m[box[0]:box[2], box[1]:box[3]] = 1
    return m


@pytest.mark.parametrize("kind", ["numpy", "torch", "meta"])
def test_lung_crop_box_margin_and_types(kind):
    img = np.arange(3 * 40 * 60, dtype=np.float32).reshape(3, 40, 60)
    x = {"numpy": img, "torch": torch.as_tensor(img), "meta": MetaTensor(torch.as_tensor(img))}[kind]
    mask = _mask()  # rows 10..29, cols 20..49: box 20 x 30
    out = CropToMask(margin=0.1, margin_unit="fraction", spatial_dims=2)(x, mask)
    assert type(out) is type(x)
    # 10% of 20 rows = 2, 10% of 30 columns = 3 on each side
    assert tuple(out.shape) == (3, 24, 36)
    np.testing.assert_array_equal(np.asarray(out), img[:, 8:32, 17:53])


def test_lung_crop_per_axis_margin_clips_to_image_and_keeps_mask():
    mask = _mask(box=(0, 55, 5, 60))
    crop = CropToMask(margin=(1.0, 0.0), margin_unit="fraction", spatial_dims=2)
    out = crop(np.ones((1, 40, 60), np.float32), mask)
    assert crop.last_box == {"start": [0, 55], "end": [10, 60], "empty": False}
    assert out.shape == (1, 10, 5)
    # no channel, torch mask with a channel: same box
    out2 = CropToMask(margin=0, spatial_dims=2)(torch.zeros(40, 60), torch.as_tensor(_mask())[None])
    assert tuple(out2.shape) == (20, 30)


def test_lung_crop_metatensor_affine_shifted():
    img = MetaTensor(torch.zeros(1, 40, 60), meta={"filename_or_obj": "a.png"})
    out = CropToMask(margin=0)(img, _mask())
    assert out.affine[0, -1].item() == 10 and out.affine[1, -1].item() == 20
    assert out.meta["filename_or_obj"] == "a.png"


def test_lung_crop_empty_mask(caplog):
    img = MetaTensor(torch.ones(1, 40, 60), meta={"filename_or_obj": "/d/x.png"})
    with caplog.at_level(logging.WARNING):
        out = CropToMask(mask_name="lung")(img, np.zeros((40, 60)))
    assert tuple(out.shape) == (1, 40, 60) and "empty lung mask" in caplog.text and "/d/x.png" in caplog.text
    with pytest.raises(BadInputError, match=r"/d/x.png: the lung mask is empty"):
        CropToMask(empty="raise", mask_name="lung")(img, np.zeros((40, 60)))


def test_lung_crop_argument_and_shape_errors():
    with pytest.raises(ValueError, match=r"margin must be one or two numbers >= 0.*-0.1"):
        CropToMask(margin=-0.1, margin_unit="fraction", spatial_dims=2)
    with pytest.raises(ValueError, match="margin must be one or two"):
        CropToMask(margin=(0.1, 0.1, 0.1), margin_unit="fraction", spatial_dims=2)
    with pytest.raises(ValueError, match=r"mask's spatial shape \(40, 50\) differs from the image's \(40, 60\)"):
        CropToMask()(np.zeros((1, 40, 60)), np.zeros((40, 50)))
    with pytest.raises(ValueError, match="image must be"):
        CropToMask(spatial_dims=2)(np.zeros((1, 1, 40, 60)), np.zeros((40, 60)))


def test_lung_cropd_crops_all_keys_and_stores_box():
    d = {"image": torch.rand(1, 40, 60), "label": torch.rand(1, 40, 60), "lung_mask": torch.as_tensor(_mask())[None]}
    out = CropToMaskd(keys=["image", "label"], mask_key="lung_mask", margin=0.0, box_key="lung_box")(d)
    assert out["image"].shape == out["label"].shape == (1, 20, 30)
    torch.testing.assert_close(out["label"], d["label"][:, 10:30, 20:50])
    assert out["lung_box"] == {"start": [10, 20], "end": [30, 50], "empty": False}
    assert out["lung_mask"].shape == (1, 40, 60)  # not in keys: untouched
    with pytest.raises(KeyError, match="mask key 'lungs' not in the data"):
        CropToMaskd(keys="image", mask_key="lungs")(d)


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
    crop = CropToMask(margin=(1, 2, 3), spatial_dims=3)
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
    cropped_mask = CropToMask(margin=(1, 2, 3), spatial_dims=3)(mask, mask)
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
    plain = CropToMask(margin=3.0, margin_unit="mm", spacing=SPACING.tolist(), spatial_dims=3)
    plain(vol, mask)
    assert plain.last_box == crop.last_box
    with pytest.raises(ValueError, match="spacing"):
        CropToMask(margin=3.0, margin_unit="mm", spatial_dims=3)(vol, mask)


def test_crop_min_size_and_empty_mask_behaviour(phantom):
    vol, mask = phantom["volume"], phantom["mask"]
    out = CropToMask(min_size=(8, 24, 24))(vol, mask)
    assert out.shape == (8, 24, 24)
    big = CropToMask(min_size=(40, 40, 40))(vol, mask)  # larger than the volume: the whole volume, no padding
    assert big.shape == vol.shape
    empty = np.zeros_like(mask)
    np.testing.assert_array_equal(CropToMask(margin=2, spatial_dims=3)(vol, empty), vol)  # default "full"
    centre = CropToMask(empty="center", min_size=(4, 8, 8))
    assert centre(vol, empty).shape == (4, 8, 8) and centre.last_box["start"] == [6, 12, 12]
    named = MetaTensor(torch.as_tensor(vol)[None], meta={"filename_or_obj": "/data/knee_007.nii.gz"})
    with pytest.raises(BadInputError, match=r"knee_007\.nii\.gz: the ROI mask is empty"):
        CropToMask(empty="raise")(named, empty)


def test_crop_argument_and_shape_errors(phantom):
    with pytest.raises(ValueError, match="margin_unit must be 'voxel' or 'mm', got 'cm'"):
        CropToMask(margin_unit="cm")
    with pytest.raises(ValueError, match="margin must be one or three numbers >= 0, got -1"):
        CropToMask(margin=-1, spatial_dims=3)
    with pytest.raises(ValueError, match="empty must be one of"):
        CropToMask(empty="pad")
    with pytest.raises(
        ValueError, match=r"mask's spatial shape \(16, 32, 30\) differs from the volume's \(16, 32, 32\)"
    ):
        CropToMask(spatial_dims=3)(phantom["volume"], phantom["mask"][:, :, :30])


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


