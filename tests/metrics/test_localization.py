"""Pointing game and IoU of thresholded maps against boxes (the localisation scores of the chest bundle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplugin.metrics.localization import (
    IOBB_THRESHOLDS,
    IOU_THRESHOLDS,
    box_iobb,
    box_iou,
    box_mask,
    film_localization_scores,
    localization_report,
    localization_scores,
    map_box_iou,
    map_peak,
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


def test_pointing_game_tolerance_is_in_film_pixels_not_model_pixels():
    """A 224 x 224 map of a 1024 x 1024 film; the peak lies 60 film pixels right of the box."""
    box = (400.0, 400.0, 100.0, 100.0)  # film pixels, as in BBox_List_2017.csv
    cam = np.zeros((224, 224))
    col = int(560 * 224 / 1024)  # film x = 560: 60 pixels right of the box's edge at 500
    cam[98, col] = 1.0  # film y ~ 450
    peak_x = (col + 0.5) * 1024 / 224
    assert 55 < peak_x - 500 < 65
    film = film_localization_scores(cam, box, (1024, 1024), tolerance=15)
    assert not film["hit"]  # 15 film pixels do not reach it
    assert film_localization_scores(cam, box, (1024, 1024), tolerance=70)["hit"]
    # the same 15 as model-input pixels would be 69 film pixels: a hit (the old, too lenient reading)
    in_model = scale_box(box, (1024, 1024), (224, 224))
    assert pointing_game_hit(cam, in_model, tolerance=15)
    assert film["peak"] == pytest.approx([peak_x, (98 + 0.5) * 1024 / 224], abs=0.01)


def test_a_crop_is_mapped_back_to_the_film_and_the_centre_guess_is_scored():
    # the map covers rows 100..900 and columns 50..950 of a 1024 x 1024 film (a lung crop), at 64 x 64
    cam = np.zeros((64, 64))
    cam[32, 16] = 1.0  # centre of pixel (32, 16): film x = 50 + 16.5 * 900 / 64, y = 100 + 32.5 * 800 / 64
    x, y = 50 + 16.5 * 900 / 64, 100 + 32.5 * 800 / 64
    box = (x - 10, y - 10, 20, 20)
    res = film_localization_scores(cam, box, (800, 900), offset=(100, 50), film_size=(1024, 1024))
    assert res["hit"] and res["peak"] == pytest.approx([x, y], abs=0.01)
    assert not res["centre_hit"]  # the film centre (512, 512) is far from this box
    central = film_localization_scores(cam, (480, 480, 64, 64), (800, 900), offset=(100, 50), film_size=(1024, 1024))
    assert central["centre_hit"] and not central["hit"]
    with pytest.raises(ValueError, match="needs the film_size"):
        film_localization_scores(cam, box, (800, 900), offset=(100, 50))
    assert map_peak(np.ones((4, 4))) is None
    assert not film_localization_scores(np.ones((4, 4)), box, (1024, 1024))["hit"]


def test_iobb_and_the_chestxray8_accuracies():
    assert box_iobb((10, 10, 10, 10), (0, 0, 100, 100)) == 1.0  # a small box inside a large finding
    assert box_iou((10, 10, 10, 10), (0, 0, 100, 100)) == pytest.approx(0.01)
    assert box_iobb((0, 0, 20, 10), (10, 0, 20, 10)) == pytest.approx(0.5)
    assert IOBB_THRESHOLDS == (0.1, 0.25, 0.5, 0.75, 0.9)  # Wang et al. 2017, Table 4
    assert IOU_THRESHOLDS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    recs = [{"finding": "Mass", "hit": True, "centre_hit": False, "iou": 0.5, "iobb": 0.5, "mask_iou": 0.4},
            {"finding": "Mass", "hit": False, "centre_hit": True, "iou": 0.05, "iobb": 0.3, "mask_iou": 0.0},
            {"finding": "Nodule", "hit": False, "centre_hit": False, "iou": 0.0, "iobb": 0.0, "mask_iou": 0.0}]
    rep = localization_report(recs, ["Mass", "Nodule"])
    assert rep["centre_hit_rate"] == pytest.approx(1 / 3) and rep["hit_rate"] == pytest.approx(1 / 3)
    assert rep["mean_iobb"] == pytest.approx(0.8 / 3)
    # correct when IoBB > T (strictly): 0.5 counts at T = 0.25, not at T = 0.5
    assert rep["iobb_accuracy"] == pytest.approx({"0.1": 2 / 3, "0.25": 2 / 3, "0.5": 0.0, "0.75": 0.0, "0.9": 0.0})
    assert rep["iou_accuracy"]["0.1"] == pytest.approx(1 / 3) and rep["iou_accuracy"]["0.5"] == 0.0
    assert rep["per_finding"]["Mass"]["iobb_accuracy"]["0.25"] == 1.0
    # a map scored with localization_scores gets the IoBB of the same (largest-region) box as its IoU
    cam = np.zeros((32, 32))
    cam[8:16, 4:20] = 1.0
    s = localization_scores(cam, (0, 0, 32, 32))
    assert s["iobb"] == 1.0 and s["iou"] == pytest.approx(128 / 1024)


def test_peak_in_mask_scores_the_peak_not_pixel_zero():
    from medplugin.metrics.localization import peak_in_mask

    mask = np.zeros((40, 50), bool)
    mask[0:6, 0:6] = True  # a lesion in the corner where argmax of an empty map would point
    mask[20:26, 30:36] = True
    assert peak_in_mask(_blob((40, 50), 22, 32, 3), mask)
    assert not peak_in_mask(_blob((40, 50), 10, 10, 3), mask)
    assert peak_in_mask(_blob((40, 50), 18, 32, 2), mask, tolerance=2.5)
    assert not peak_in_mask(_blob((40, 50), 18, 32, 2), mask, tolerance=1.0)
    # an empty (constant) Grad-CAM is a miss, though np.argmax would put its "peak" at (0, 0), inside the mask
    assert int(np.argmax(np.zeros((40, 50)))) == 0 and mask[0, 0]
    assert not peak_in_mask(torch.zeros(1, 40, 50), mask)
    # a map clamped at its border (an upsampled 2x2 map): the plateau's centroid counts, not its first pixel
    corner = torch.nn.functional.interpolate(torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]), size=(40, 50),
                                             mode="bilinear", align_corners=False)[0, 0]
    assert corner[0, 0] == corner.max() and not peak_in_mask(corner, np.pad(np.ones((2, 2), bool), ((0, 38), (0, 48))))
    assert not peak_in_mask(_blob((40, 50), 22, 32, 3), np.zeros((40, 50), bool))


def test_peak_in_mask_names_bad_input():
    from medplugin.metrics.localization import peak_in_mask

    with pytest.raises(ValueError, match=r"map of shape \(40, 50\) and mask of shape \(20, 25\) differ"):
        peak_in_mask(np.ones((40, 50)), np.ones((20, 25), bool))
    with pytest.raises(ValueError, match="tolerance must be >= 0, got -1"):
        peak_in_mask(np.ones((40, 50)), np.ones((40, 50), bool), tolerance=-1)
