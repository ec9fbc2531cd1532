"""Tests of the synthetic fundus generator and the synthetic EyePACS demo set."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from medplugin.data.synthetic.fundus import GRADE_LESIONS, make_eyepacs_demo, synthetic_fundus


def test_synthetic_fundus_content():
    f = synthetic_fundus(128, n_dark=3, n_bright=2, n_blotch=1, rng=0)
    img = f["image"]
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    cy, cx, r = f["fov"]
    yy, xx = np.mgrid[:128, :128]
    assert img[np.hypot(yy - cy, xx - cx) > r + 1.5].max() < 10  # black outside the FOV (soft 1-2 px rim)
    assert img[int(cy), int(cx), 0] > img[int(cy), int(cx), 2] + 60  # orange-red retina
    assert f["dark"].shape == (4, 3) and f["bright"].shape == (2, 3) and f["dark_kind"] == ["blotch", "ma", "ma", "ma"]
    dd = f["disc_diameter"]
    dr, dc = map(int, f["disc"])
    assert img[dr, dc].mean() > img[int(f["fovea"][0]), int(f["fovea"][1])].mean() + 60  # bright disc, dark fovea
    for r0, c0, rad in np.concatenate([f["dark"], f["bright"]]):
        assert np.hypot(r0 - cy, c0 - cx) < r - rad
        assert np.hypot(r0 - f["fovea"][0], c0 - f["fovea"][1]) <= 2 * dd
        assert np.hypot(r0 - f["disc"][0], c0 - f["disc"][1]) > dd / 2 + rad
    for r0, c0, _ in f["dark"]:  # dark lesions are darker than the retina around them in green
        assert (
            img[int(round(r0)), int(round(c0)), 1] < img[int(r0) - 8 : int(r0) + 9, int(c0) - 8 : int(c0) + 9, 1].mean()
        )
    for r0, c0, _ in f["bright"]:
        assert img[int(round(r0)), int(round(c0)), 1] > 150
    pts = np.concatenate([f["dark"], f["bright"]])[:, :2]
    dist = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1)) + np.eye(len(pts)) * 1e9
    assert dist.min() > 6  # away from each other
    # deterministic for a seed, different for another
    assert np.array_equal(
        synthetic_fundus(128, n_dark=3, rng=1)["image"], synthetic_fundus(128, n_dark=3, rng=1)["image"]
    )
    assert not np.array_equal(synthetic_fundus(128, rng=1)["image"], synthetic_fundus(128, rng=2)["image"])


def test_synthetic_fundus_bad_args():
    with pytest.raises(ValueError, match=r"size must be an int >= 48, got 20"):
        synthetic_fundus(20)
    with pytest.raises(ValueError, match=r"n_dark must be a non-negative int, got -1"):
        synthetic_fundus(64, n_dark=-1)
    with pytest.raises(ValueError, match=r"side must be 'left' or 'right', got 'up'"):
        synthetic_fundus(64, side="up")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_make_eyepacs_demo_layout_grades_and_determinism(tmp_path):
    summary = make_eyepacs_demo(tmp_path / "a", n_patients=3, size=64, seed=0, n_test_patients=1)
    root = tmp_path / "a"
    train = _read(root / "trainLabels.csv")
    test = _read(root / "testLabels.csv")
    assert train[0] == ["image", "level"] and test[0] == ["image", "level"]
    assert [r[0] for r in train[1:]] == ["1_left", "1_right", "2_left", "2_right", "3_left", "3_right"]
    assert [r[0] for r in test[1:]] == ["4_left", "4_right"]
    assert sorted(p.name for p in (root / "train").iterdir()) == [f"{r[0]}.jpeg" for r in train[1:]]
    assert sorted(p.name for p in (root / "test").iterdir()) == [f"{r[0]}.jpeg" for r in test[1:]]
    with Image.open(root / "train" / "1_left.jpeg") as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
    levels = [int(r[1]) for r in train[1:]]
    assert set(levels) == {0, 1, 2, 3, 4}  # every grade used in turn
    assert summary["train"] == {g: levels.count(g) for g in sorted(set(levels))}
    assert summary["n_images"] == 8
    # grades follow the planted lesions
    for rec in summary["records"]:
        for kind, (lo, hi) in GRADE_LESIONS[rec["level"]].items():
            assert lo <= rec[kind] <= hi, rec
        assert (rec["level"] == 0) == (rec["n_dark"] == 0)
        assert (rec["level"] >= 2) == (rec["n_bright"] > 0)
        assert (rec["level"] >= 3) == (rec["n_blotch"] > 0)
        assert (rec["level"] == 4) == (rec["n_tangles"] > 0)
        # where the lesions were planted: one [row, col, radius] inside the image per microaneurysm, blotch, exudate
        assert len(rec["lesions"]) == rec["n_dark"] + rec["n_blotch"] + rec["n_bright"], rec
        assert all(0 <= r < 64 and 0 <= c < 64 and rad > 0 for r, c, rad in rec["lesions"]), rec
    # deterministic for a seed
    make_eyepacs_demo(tmp_path / "b", n_patients=3, size=64, seed=0, n_test_patients=1)
    for rel in ["trainLabels.csv", "testLabels.csv", "train/2_right.jpeg", "test/4_left.jpeg"]:
        assert (root / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    other = make_eyepacs_demo(tmp_path / "c", n_patients=3, size=64, seed=1, n_test_patients=1)
    assert other["records"] != summary["records"]


def test_make_eyepacs_demo_bad_args(tmp_path):
    with pytest.raises(ValueError, match=r"n_patients must be an int >= 1, got 0"):
        make_eyepacs_demo(tmp_path, n_patients=0)
    with pytest.raises(ValueError, match=r"quality must be in 1..100, got 101"):
        make_eyepacs_demo(tmp_path, n_patients=1, quality=101)
