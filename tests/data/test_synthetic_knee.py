"""Synthetic knee phantoms and the demo data sets in the MRNet and clinical NIfTI layouts."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medplugin.data.synthetic.knee import (
    KNEE_DEMO_AFFINE,
    make_knee_nifti_demo,
    make_mrnet_demo,
    synthetic_knee,
)
from medplugin.io.mrnet import read_knee_volume, read_mrnet_volume

SHAPE = (8, 32, 32)


def _fibres(ph):
    """Dark ligament fibres inside the ACL mask of a noise-free phantom."""
    return (ph["mask"] == 1) & (ph["volume"] < 0.2)


def test_phantom_shapes_types_and_bbox():
    ph = synthetic_knee(SHAPE, condition=0, rng=0)
    assert ph["volume"].shape == SHAPE and ph["volume"].dtype == np.float32
    assert 0.0 <= ph["volume"].min() and ph["volume"].max() <= 1.0
    assert ph["mask"].shape == SHAPE and ph["mask"].dtype == np.uint8 and set(np.unique(ph["mask"])) == {0, 1}
    s0, r0, c0, s1, r1, c1 = ph["bbox"]
    assert ph["mask"][s0:s1, r0:r1, c0:c1].sum() == ph["mask"].sum()  # the box holds the whole mask
    assert ph["mask"][s0, r0:r1, c0:c1].any() and ph["mask"][s1 - 1].any()  # and is tight
    # the ligament is in the central slices only, between the bones
    assert not ph["mask"][0].any() and not ph["mask"][-1].any()
    assert ph["condition"] == 0


def test_phantom_is_deterministic_given_seed():
    a, b = synthetic_knee(SHAPE, 2, rng=5), synthetic_knee(SHAPE, 2, rng=5)
    np.testing.assert_array_equal(a["volume"], b["volume"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert not np.array_equal(a["volume"], synthetic_knee(SHAPE, 2, rng=6)["volume"])
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(
        synthetic_knee(SHAPE, 1, rng=g1)["volume"], synthetic_knee(SHAPE, 1, rng=g2)["volume"]
    )


@pytest.mark.parametrize("size", [32, 64, 256])
def test_condition_encodes_ligament_continuity(size):
    shape = (6, size, size)
    ph = {c: synthetic_knee(shape, c, rng=1, noise=0.0) for c in range(4)}
    k = int(np.nonzero(ph[0]["mask"].any(axis=(1, 2)))[0][0])  # a slice with the ligament
    n_fibres = {c: int(_fibres(ph[c])[k].sum()) for c in range(4)}
    n_parts = {c: ndimage.label(_fibres(ph[c])[k], structure=np.ones((3, 3)))[1] for c in range(4)}
    # same geometry for one seed: the ACL region does not depend on the condition
    for c in range(1, 4):
        np.testing.assert_array_equal(ph[c]["mask"], ph[0]["mask"])
    assert n_parts[0] == 1 and n_parts[1] == 1 and n_parts[2] == 1  # intact, thinned, partly torn: continuous
    assert n_parts[3] == 2  # complete rupture: femoral and tibial stumps
    assert n_fibres[1] < 0.7 * n_fibres[0]  # thinned
    assert n_fibres[3] < n_fibres[2] < n_fibres[0]
    # a tear is bright fluid inside the ACL region; intact and strained ligaments have none
    fluid = {c: int(((ph[c]["mask"] == 1) & (ph[c]["volume"] > 0.9)).sum()) for c in range(4)}
    assert fluid[0] == fluid[1] == 0 < fluid[2] < fluid[3]


def test_meniscus_tear_is_drawn():
    a = synthetic_knee(SHAPE, 0, rng=2, noise=0.0)["volume"]
    b = synthetic_knee(SHAPE, 0, rng=2, noise=0.0, meniscus_tear=True)["volume"]
    assert (b > a + 0.5).any()


def test_phantom_argument_errors():
    with pytest.raises(ValueError, match=r"condition must be one of 0-3 .*got 4"):
        synthetic_knee(SHAPE, condition=4)
    with pytest.raises(ValueError, match=r"shape must be .*got \(8, 8, 32\)"):
        synthetic_knee((8, 8, 32))
    with pytest.raises(ValueError, match="noise must be >= 0, got -1"):
        synthetic_knee(SHAPE, noise=-1)


def test_make_mrnet_demo_layout(tmp_path):
    info = make_mrnet_demo(tmp_path, n_train=6, n_valid=3, slices=(4, 6), size=32, seed=0)
    for split, ids in (("train", range(0, 6)), ("valid", range(6, 9))):
        for plane in ("sagittal", "coronal", "axial"):
            names = sorted(p.name for p in (tmp_path / split / plane).iterdir())
            assert names == [f"{i:04d}.npy" for i in ids]
            for name in names:
                vol = read_mrnet_volume(tmp_path / split / plane / name)
                assert vol.dtype == np.uint8 and vol.shape[1:] == (32, 32) and 4 <= vol.shape[0] <= 6
        for task in ("acl", "abnormal", "meniscus"):
            with open(tmp_path / f"{split}-{task}.csv") as f:
                rows = list(csv.reader(f))
            assert [r[0] for r in rows] == [f"{i:04d}" for i in ids]  # no header, zero-padded ids
            for eid, label in rows:
                assert label == str(info["labels"][task][eid])
    for eid, cond in info["conditions"].items():
        assert info["labels"]["acl"][eid] == int(cond >= 2)
        assert info["labels"]["abnormal"][eid] == int(cond >= 1 or info["labels"]["meniscus"][eid])
    assert sorted(set(info["conditions"].values())) == [0, 1, 2, 3]


def test_make_mrnet_demo_is_deterministic(tmp_path):
    make_mrnet_demo(tmp_path / "a", n_train=2, n_valid=1, slices=(3, 4), size=16, seed=3)
    make_mrnet_demo(tmp_path / "b", n_train=2, n_valid=1, slices=(3, 4), size=16, seed=3)
    for f in sorted((tmp_path / "a").rglob("*.*")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f
    with pytest.raises(ValueError, match=r"slices must be \(min, max\) .*got \(5, 3\)"):
        make_mrnet_demo(tmp_path / "c", slices=(5, 3))


def test_make_knee_nifti_demo_layout(tmp_path):
    info = make_knee_nifti_demo(tmp_path, n=6, shape=SHAPE, seed=0, exams_per_patient=2)
    with open(tmp_path / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["exam"] for r in rows] == [f"knee_{i:03d}" for i in range(6)]
    assert {int(r["label"]) for r in rows} <= {0, 1, 2, 3} and len({r["label"] for r in rows}) == 4
    assert [r["patient"] for r in rows] == ["patient_000"] * 2 + ["patient_001"] * 2 + ["patient_002"] * 2
    for r in rows:
        img = nib.load(tmp_path / "exams" / f"{r['exam']}.nii.gz")
        msk = nib.load(tmp_path / "masks" / f"{r['exam']}.nii.gz")
        assert not np.allclose(img.affine, np.eye(4))
        np.testing.assert_allclose(img.affine, KNEE_DEMO_AFFINE)
        np.testing.assert_allclose(msk.affine, img.affine)
        np.testing.assert_allclose(img.header.get_zooms(), (0.5, 0.5, 3.0))
        vol, affine = read_knee_volume(tmp_path / "exams" / f"{r['exam']}.nii.gz")
        mask, _ = read_knee_volume(tmp_path / "masks" / f"{r['exam']}.nii.gz")
        assert vol.shape == SHAPE and mask.shape == SHAPE and set(np.unique(mask)) == {0.0, 1.0}
        np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [3.0, 0.5, 0.5])
    assert info["labels"] == {r["exam"]: int(r["label"]) for r in rows}
    again = make_knee_nifti_demo(tmp_path / "again", n=6, shape=SHAPE, seed=0, exams_per_patient=2)
    assert again["labels"] == info["labels"]
    a = nib.load(tmp_path / "exams" / "knee_003.nii.gz").get_fdata()
    b = nib.load(tmp_path / "again" / "exams" / "knee_003.nii.gz").get_fdata()
    np.testing.assert_array_equal(a, b)
