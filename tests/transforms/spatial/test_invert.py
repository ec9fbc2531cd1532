"""Masks and maps go back on the input's own grid with MONAI's Invertd (and, in 3D, the file's voxel order):
shape, affine and the planted region, for a 2D PNG and DICOM radiograph and a 3D NIfTI whose voxel order is not
the loader's; and the spatial helpers (ToOriginalOrientation, CheckGeometry) with numpy and torch input."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from medplugin.errors import BadInputError
from medplugin.transforms import (
    CheckGeometry,
    CheckGeometryd,
    CropToMaskd,
    LoadImage2d,
    LoadKneeVolume,
    LoadKneeVolumed,
    ToOriginalOrientation,
    ToOriginalOrientationd,
    knee_classification_preprocessing,
    lung_segmentation_preprocessing,
    to_input_grid,
)
from medplugin.visualize.overlay import save_nifti
from tests.transforms.spatial._planted import (
    FILE_AFFINE,
    FILE_SHAPE,
    PLANT_LOADED,
    write_dicom,
    write_exam,
    write_png,
)


@pytest.mark.parametrize("fmt", ["png", "dcm"])
def test_a_2d_mask_goes_back_exactly_on_the_radiograph(tmp_path, fmt):
    path = tmp_path / f"cxr.{fmt}"
    mask = write_png(path) if fmt == "png" else write_dicom(path)
    prep = lung_segmentation_preprocessing(image_size=16, track_meta=True)
    d = prep({"image": str(path)})
    assert d["image"].shape == (1, 16, 16) and d["image"].applied_operations  # the resize is recorded
    pred = MetaTensor(torch.as_tensor(mask[::3, ::5][None], dtype=torch.float32))  # the mask at the network size
    back = Invertd("pred", prep, orig_keys="image", nearest_interp=True)({"image": d["image"], "pred": pred})["pred"]
    loaded = LoadImage2d()(str(path))
    assert back.shape == (1, 48, 80) == loaded.shape
    np.testing.assert_array_equal(back[0].numpy(), mask)  # the planted region, pixel for pixel
    np.testing.assert_allclose(back.affine.numpy(), loaded.affine.numpy())
    # the default (plain tensors, no record) gives nothing to invert
    assert type(lung_segmentation_preprocessing(image_size=16)({"image": str(path)})["image"]) is torch.Tensor


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_to_input_grid_takes_numpy_and_torch_maps(tmp_path, kind):
    path = tmp_path / "cxr.png"
    mask = write_png(path)
    prep = lung_segmentation_preprocessing(image_size=16, track_meta=True)
    image = prep({"image": str(path)})["image"]
    small = mask[::3, ::5][None].astype(np.float32)
    back = to_input_grid(small if kind == "numpy" else torch.as_tensor(small), image, prep, nearest=True)
    np.testing.assert_array_equal(back[0].numpy(), mask)
    assert not isinstance(to_input_grid(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), prep), MetaTensor)  # no record


def test_a_3d_map_goes_back_on_the_loaded_grid_and_then_the_files_voxel_order(tmp_path):
    path = tmp_path / "exam.nii.gz"
    _, file_mask = write_exam(path)
    prep = knee_classification_preprocessing(image_size=10, num_slices=6)
    d = prep({"image": str(path)})
    assert d["image"].shape == (1, 6, 10, 10)
    cam = torch.zeros(1, 6, 10, 10)
    cam[0, 1:4, 2:6, 3:8] = 1  # the planted region on the network input: slices 3..5 of 10 (2..7 kept), 2x in-plane
    back = Invertd("cam", prep, orig_keys="image", nearest_interp=True)({"image": d["image"], "cam": MetaTensor(cam)})
    back = back["cam"]
    loaded = LoadKneeVolume()(str(path))
    assert back.shape == loaded.shape == (1, 10, 20, 20)
    expected = np.zeros((10, 20, 20))
    expected[PLANT_LOADED] = 1
    np.testing.assert_array_equal(back[0].numpy(), expected)
    np.testing.assert_allclose(back.affine.numpy(), loaded.affine.numpy())
    on_file = ToOriginalOrientation()(back)
    assert on_file.shape == (1, *FILE_SHAPE) and list(on_file.meta["spatial_shape"]) == list(FILE_SHAPE)
    np.testing.assert_allclose(on_file.affine.numpy(), FILE_AFFINE)
    save_nifti(tmp_path / "cam.nii.gz", on_file[0].numpy().astype(np.uint8), on_file.affine.numpy())
    written = nib.load(tmp_path / "cam.nii.gz")  # read back as a viewer would
    assert written.shape == nib.load(path).shape and np.allclose(written.affine, nib.load(path).affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), file_mask)


@pytest.mark.parametrize("spatial", [(40, 60), (12, 30, 30)])
def test_the_crop_to_mask_is_undone_with_zeros_outside(spatial):
    img = MetaTensor(torch.rand(1, *spatial))
    m = torch.zeros(1, *spatial)
    m[(0, *(slice(s // 4, s // 2) for s in spatial))] = 1
    t = Compose([CropToMaskd("image", mask_key="m", margin=1)])
    d = t({"image": img, "m": m})
    assert d["image"].shape[1:] == tuple(s // 2 - s // 4 + 2 for s in spatial)
    back = Invertd("image", t, orig_keys="image", nearest_interp=False)(dict(d))["image"]
    assert back.shape == img.shape
    box = tuple(slice(s // 4 - 1, s // 2 + 1) for s in spatial)
    torch.testing.assert_close(back[(0, *box)], img[(0, *box)])
    assert float(back.sum()) == pytest.approx(float(img[(0, *box)].sum()), rel=1e-5)  # zero elsewhere


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_to_original_orientation_with_a_reference_grid(tmp_path, kind):
    path = tmp_path / "exam.nii.gz"
    vol, _ = write_exam(path)
    d = LoadKneeVolumed("image")({"image": str(path)})
    plain = d["image"].numpy() if kind == "numpy" else d["image"].as_tensor()
    out = ToOriginalOrientationd(["pred", "image"], ref_key="image")({"pred": plain, "image": d["image"]})
    np.testing.assert_allclose(out["pred"][0].numpy(), vol)
    assert list(out["image"].meta["spatial_shape"]) == list(FILE_SHAPE)  # what MONAI Label's restore step reads
    assert d["image"].shape == (1, 10, 20, 20)  # the caller's tensor is not modified
    with pytest.raises(ValueError, match="needs a MetaTensor"):
        ToOriginalOrientation()(plain)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_check_geometry_names_the_mask(kind):
    img = np.zeros((1, 4, 6, 8), np.float32)
    mask = img if kind == "numpy" else torch.as_tensor(img)
    assert CheckGeometry()(mask, img) is mask
    named = MetaTensor(torch.zeros(1, 4, 6, 7), meta={"filename_or_obj": "/d/m.nii.gz"})
    with pytest.raises(
        BadInputError, match=r"/d/m.nii.gz: mask shape \(4, 6, 7\) differs from its image's \(4, 6, 8\)"
    ):
        CheckGeometryd("label")({"image": img, "label": named})
    shifted = MetaTensor(torch.zeros(1, 4, 6, 8), affine=torch.diag(torch.tensor([1.0, 1, 2, 1])))
    with pytest.raises(BadInputError, match="not the same grid"):
        CheckGeometry()(shifted, MetaTensor(torch.zeros(1, 4, 6, 8)))
