"""Tests of the fundus dictionary transforms and FundusPreprocessd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplugin.data.synthetic.fundus import synthetic_fundus
from medplugin.transforms import (
    AnnotateCandidates,
    AnnotateCandidatesd,
    FundusFOVCrop,
    FundusFOVCropd,
    FundusPreprocessd,
    GrahamContrast,
    GrahamContrastd,
    LesionCandidates,
    LesionCandidatesd,
    RadialSymmetry,
    RadialSymmetryd,
    TsallisThreshold,
    TsallisThresholdd,
)


@pytest.fixture(scope="module")
def fundus():
    f = synthetic_fundus(128, n_dark=4, n_bright=3, rng=5)
    f["chw"] = np.ascontiguousarray(f["image"].transpose(2, 0, 1)).astype(np.float32)
    return f


def test_dict_twins_equal_array_results(fundus):
    img = fundus["chw"]
    out = FundusFOVCropd("image", spatial_size=96, mask_key="mask")({"image": img})
    ref, ref_mask = FundusFOVCrop(96, return_mask=True)(img)
    np.testing.assert_array_equal(out["image"], ref)
    np.testing.assert_array_equal(out["mask"], ref_mask)

    g = GrahamContrastd("image", mask_key="mask")(out)
    np.testing.assert_array_equal(g["image"], GrahamContrast()(ref, ref_mask))

    s = RadialSymmetryd("image", mask_key="mask", polarity="bright")(g)
    assert "image_bright_symmetry" in s and np.array_equal(s["image"], g["image"])
    np.testing.assert_array_equal(s["image_bright_symmetry"], RadialSymmetry(polarity="bright")(g["image"], ref_mask))

    t = TsallisThresholdd("image_bright_symmetry", mask_key="mask")(s)
    ref_map, ref_t = TsallisThreshold()(s["image_bright_symmetry"], ref_mask)
    np.testing.assert_array_equal(t["image_bright_symmetry"], ref_map)
    assert t["image_bright_symmetry_threshold"] == ref_t

    c = LesionCandidatesd("image", mask_key="mask", max_fovea_distance=None)(out)
    np.testing.assert_array_equal(c["candidates"], LesionCandidates(max_fovea_distance=None)(ref, ref_mask))
    a = AnnotateCandidatesd("image", mode="channels")(c)
    np.testing.assert_array_equal(a["image"], AnnotateCandidates("channels")(ref, c["candidates"]))


def test_lesion_candidates_d_uses_fovea_key(fundus):
    d = {"image": fundus["chw"], "mask": fundus["mask"][None].astype(np.float32), "fovea": (5.0, 5.0)}
    out = LesionCandidatesd("image", mask_key="mask", fovea_key="fovea", max_fovea_distance=0.5)(d)
    assert out["candidates"].shape == (0, 5)
    out = LesionCandidatesd("image", mask_key="mask", fovea_key="fovea", max_fovea_distance=None)(d)
    assert len(out["candidates"]) >= 7


def test_missing_keys(fundus):
    with pytest.raises(KeyError):
        GrahamContrastd("other")({"image": fundus["chw"]})
    d = GrahamContrastd("other", allow_missing_keys=True)({"image": fundus["chw"]})
    assert d["image"] is fundus["chw"]


@pytest.mark.parametrize(
    "mode, annotate, channels",
    [("original", "draw", 3), ("enhanced", "draw", 3), ("annotated", "draw", 3), ("annotated", "channels", 5)],
)
def test_preprocess_modes(fundus, mode, annotate, channels):
    assert FundusPreprocessd.out_channels(mode, annotate) == channels
    t = FundusPreprocessd(
        "image", mode=mode, spatial_size=96, annotate=annotate, mask_key="fov", candidates_key="cands"
    )
    out = t({"image": fundus["chw"]})
    img = out["image"]
    assert img.shape == (channels, 96, 96) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert np.all(img[:3, out["fov"][0] == 0] == 0)
    if mode == "annotated":
        assert out["cands"].shape[1] == 5 and len(out["cands"]) >= 5
    else:
        assert "cands" not in out
    if mode == "original":
        np.testing.assert_allclose(img * 255.0, FundusFOVCrop(96)(fundus["chw"]), atol=1e-3)
    tt = t({"image": torch.as_tensor(fundus["chw"])})
    assert isinstance(tt["image"], torch.Tensor) and tt["image"].dtype == torch.float32
    np.testing.assert_allclose(tt["image"].numpy(), img, atol=1e-5)


def test_preprocess_bad_args():
    with pytest.raises(ValueError, match=r"mode must be one of \('original', 'enhanced', 'annotated'\), got 'fancy'"):
        FundusPreprocessd("image", mode="fancy")
    with pytest.raises(ValueError, match=r"annotate must be one of \('draw', 'channels'\), got 'both'"):
        FundusPreprocessd.out_channels("annotated", "both")
    with pytest.raises(ValueError, match=r"mask_key must be None, a str or one str per key, got 3"):
        FundusFOVCropd("image", mask_key=3)
