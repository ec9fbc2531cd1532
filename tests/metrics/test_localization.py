"""Pointing game and IoU of thresholded maps against boxes (the localisation scores of the chest bundle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplugin.metrics.localization import (
    box_iou,
    box_mask,
    localization_report,
    localization_scores,
    map_box_iou,
    map_to_box,
    mask_iou,
    pointing_game_hit,
    scale_box,
)


def _blob(shape, cy, cx, r):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))


def test_pointing_game_hits_inside_and_misses_outside():
    cam = _blob((64, 64), 20, 40, 3)
    assert pointing_game_hit(cam, (35, 15, 10, 10))  # peak at x=40, y=20
    assert not pointing_game_hit(cam, (0, 40, 10, 10))
    # tolerance grows the box
    assert not pointing_game_hit(cam, (44, 15, 10, 10))
    assert pointing_game_hit(cam, (44, 15, 10, 10), tolerance=4)
    assert pointing_game_hit(torch.as_tensor(cam)[None, None], (35, 15, 10, 10))  # (1, 1, H, W) tensors
    assert not pointing_game_hit(np.ones((8, 8)), (0, 0, 8, 8))  # a flat map points nowhere


def test_pointing_game_uses_the_centre_of_a_plateau():
    cam = np.zeros((16, 16))
    cam[0:4, 0:8] = 1.0  # plateau centred at x=4, y=2
    assert pointing_game_hit(cam, (3, 1, 2, 2))
    assert not pointing_game_hit(cam, (0, 0, 2, 2))  # a corner of the plateau is not its centre


def test_box_iou_and_scaling():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    # NIH boxes are in 1024 px; a 224 model input scales by 224/1024
    assert scale_box((512, 256, 128, 64), (1024, 1024), (224, 224)) == pytest.approx((112, 56, 28, 14))
    # a crop starting at (row 100, col 200) of size 400x800 -> 100x200
    assert scale_box((300, 150, 80, 40), (400, 800), (100, 200), offset=(100, 200)) == pytest.approx((25, 12.5, 20, 10))
    with pytest.raises(ValueError, match="positive w, h"):
        box_iou((0, 0, 0, 5), (0, 0, 1, 1))


def test_thresholded_map_box_and_ious():
    cam = np.zeros((32, 32))
    cam[8:16, 4:20] = 1.0
    cam[28:30, 28:30] = 0.9  # a smaller second region: not the largest
    assert map_to_box(cam, 0.5) == (4.0, 8.0, 16.0, 8.0)
    assert map_box_iou(cam, (4, 8, 16, 8)) == pytest.approx(1.0)
    assert map_box_iou(cam, (4, 8, 8, 8)) == pytest.approx(0.5)
    assert mask_iou(cam, (4, 8, 16, 8)) == pytest.approx(128 / (128 + 4))
    assert box_mask((4, 8, 16, 8), (32, 32)).sum() == 128
    assert map_to_box(np.zeros((4, 4))) is None and map_box_iou(np.zeros((4, 4)), (0, 0, 2, 2)) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        map_to_box(cam, 0.0)


def test_report_aggregates_per_finding():
    cam = _blob((64, 64), 20, 40, 3)
    recs = [{"finding": "Mass", **localization_scores(cam, (35, 15, 10, 10))},
            {"finding": "Mass", **localization_scores(cam, (0, 40, 10, 10))},
            {"finding": "Nodule", **localization_scores(cam, (38, 18, 4, 4))}]
    rep = localization_report(recs, ["Mass", "Nodule", "Hernia"])
    assert rep["n_boxes"] == 3 and rep["hit_rate"] == pytest.approx(2 / 3)
    assert rep["per_finding"]["Mass"]["hit_rate"] == 0.5 and rep["per_finding"]["Nodule"]["hit_rate"] == 1.0
    assert rep["per_finding"]["Hernia"]["n_boxes"] == 0 and np.isnan(rep["per_finding"]["Hernia"]["hit_rate"])
    with pytest.raises(ValueError, match="not in"):
        localization_report(recs, ["Mass"])
