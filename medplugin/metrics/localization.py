"""Scoring class activation maps against ground-truth boxes: pointing game and IoU of the thresholded map.

- Pointing game (Zhang et al. 2016/2018, "Top-down Neural Attention by Excitation Backprop"): a hit when the
  map's maximum lies inside the box (optionally within ``tolerance`` pixels of it).
- IoU of the thresholded map (Wang et al. 2017, "ChestX-ray8", Sec. 4.2): the map is binarised at a fraction
  of its maximum, the bounding box of its largest connected region is taken as the predicted box, and its
  intersection over union with the ground-truth box is scored (``mask_iou`` gives the pixel-mask variant).
- IoBB (Wang et al. 2017, Sec. 4.2): the intersection over the area of the detected (predicted) box; a box is
  localised correctly at T(IoBB) when IoBB > T(IoBB) (strictly), and the paper's Table 4 reports the accuracy
  at T(IoBB) = 0.1, 0.25, 0.5, 0.75 and 0.9 (:data:`IOBB_THRESHOLDS`); the accuracy at T(IoU) = 0.1 to 0.7
  (:data:`IOU_THRESHOLDS`, its supplementary material and later papers) is reported beside it. Wang et al.
  drew a box around every isolated region of the map; here it is the largest region's box, the same box as
  the IoU's.
- Scored as the literature does (:func:`film_localization_scores`): the pointing-game tolerance is in pixels
  of the original film (NIH boxes' 1024 x 1024 frame; Zhang et al. used 15 pixels of the original image),
  not of the network input, and a trivial guess, the film's centre, is scored beside the model's point.

Boxes are ``(x, y, w, h)`` in pixels, x to the right and y down, as in NIH's ``BBox_List_2017.csv``; a box
covers the pixel columns ``[x, x + w)`` and rows ``[y, y + h)``. Maps are ``(H, W)`` arrays of any scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "IOU_THRESHOLDS",
    "IOBB_THRESHOLDS",
    "scale_box",
    "box_iobb",
    "map_peak",
    "point_in_box",
    "film_localization_scores",
    "box_mask",
    "box_iou",
    "pointing_game_hit",
    "peak_in_mask",
    "map_to_box",
    "map_box_iou",
    "mask_iou",
    "localization_scores",
    "localization_report",
]

Box = tuple[float, float, float, float]

IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)


def _map(cam) -> np.ndarray:
    m = cam.detach().cpu().float().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam, dtype=np.float64)
    m = np.squeeze(m)
    if m.ndim != 2:
        raise ValueError(f"the map must be 2D (singleton axes allowed), got shape {np.shape(cam)}.")
    if not np.isfinite(m).all():
        raise ValueError("the map holds NaN or infinite values.")
    return m


def _box(box: Sequence[float]) -> Box:
    if len(box) != 4:
        raise ValueError(f"a box is (x, y, w, h), got {box!r}.")
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"a box needs finite x, y and positive w, h, got {box!r}.")
    return x, y, w, h


def scale_box(box: Sequence[float], from_size: Sequence[int], to_size: Sequence[int],
              offset: Sequence[float] = (0.0, 0.0)) -> Box:
    """Map a box from one image frame to another: shift by ``-offset``, then scale.

    Args:
        box: ``(x, y, w, h)`` in the source frame (e.g. the 1024 x 1024 PNG of ChestX-ray14).
        from_size: ``(H, W)`` of the source region (the whole image, or a crop of it).
        to_size: ``(H, W)`` of the destination (e.g. the model input, 224 x 224).
        offset: ``(row, col)`` of the source region's top-left corner in the source frame (a crop's start).

    Returns:
        ``(x, y, w, h)`` in the destination frame (not clipped).
    """
    x, y, w, h = _box(box)
    (fh, fw), (th, tw) = [float(v) for v in from_size], [float(v) for v in to_size]
    if min(fh, fw, th, tw) <= 0:
        raise ValueError(f"sizes must be positive, got from_size={from_size!r}, to_size={to_size!r}.")
    sy, sx = th / fh, tw / fw
    return (x - float(offset[1])) * sx, (y - float(offset[0])) * sy, w * sx, h * sy


def box_mask(box: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """Boolean ``shape`` mask of the pixels whose centres lie inside ``box`` (at least the nearest pixel)."""
    x, y, w, h = _box(box)
    hh, ww = int(shape[0]), int(shape[1])
    # pixel (r, c) has its centre at (c + 0.5, r + 0.5)
    c0, c1 = int(np.clip(math.ceil(x - 0.5), 0, ww)), int(np.clip(math.ceil(x + w - 0.5), 0, ww))
    r0, r1 = int(np.clip(math.ceil(y - 0.5), 0, hh)), int(np.clip(math.ceil(y + h - 0.5), 0, hh))
    if c1 <= c0:  # thinner than a pixel: keep the pixel holding its centre
        c0 = int(np.clip(math.floor(x + w / 2), 0, ww - 1))
        c1 = c0 + 1
    if r1 <= r0:
        r0 = int(np.clip(math.floor(y + h / 2), 0, hh - 1))
        r1 = r0 + 1
    m = np.zeros((hh, ww), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (continuous coordinates)."""
    ax, ay, aw, ah = _box(a)
    bx, by, bw, bh = _box(b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def box_iobb(pred: Sequence[float], truth: Sequence[float]) -> float:
    """Intersection over the detected box's area, IoBB (Wang et al. 2017): ``|pred & truth| / |pred|``."""
    px, py, pw, ph = _box(pred)
    tx, ty, tw, th = _box(truth)
    iw = max(0.0, min(px + pw, tx + tw) - max(px, tx))
    ih = max(0.0, min(py + ph, ty + th) - max(py, ty))
    return iw * ih / (pw * ph)


def map_peak(cam) -> tuple[float, float] | None:
    """The map's maximum as a point ``(x, y)`` in its pixel frame (pixel centres at ``+0.5``).

    With several maxima (a plateau, e.g. where an upsampled map is clamped at its border), the point is the
    centroid of the maximal pixels. A constant map has no maximum: ``None``.
    """
    m = _map(cam)
    if m.max() <= m.min():
        return None
    rows, cols = np.nonzero(m >= m.max())
    return float(cols.mean() + 0.5), float(rows.mean() + 0.5)


def point_in_box(point: Sequence[float] | None, box: Sequence[float], tolerance: float = 0.0) -> bool:
    """Whether ``point`` ``(x, y)`` lies inside ``box`` grown by ``tolerance`` on every side (``None``: no)."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}.")
    if point is None:
        return False
    x, y, w, h = _box(box)
    px, py = float(point[0]), float(point[1])
    return bool(x - tolerance <= px <= x + w + tolerance and y - tolerance <= py <= y + h + tolerance)


def pointing_game_hit(cam, box: Sequence[float], tolerance: float = 0.0) -> bool:
    """Whether the map's maximum (:func:`map_peak`) lies inside ``box`` (grown by ``tolerance`` pixels on every
    side). A constant map (no maximum) is a miss. ``box`` and ``tolerance`` are in the map's pixel frame; for
    the film's frame see :func:`film_localization_scores`.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}.")
    return point_in_box(map_peak(cam), box, tolerance)


def peak_in_mask(cam, mask, tolerance: float = 0.0) -> bool:
    """Whether the map's maximum (:func:`map_peak`: a plateau's centroid) lies in ``mask`` or within
    ``tolerance`` pixels of it: the pointing game against a segmented lesion (e.g. the lesions the synthetic
    generators plant). A constant map (an empty Grad-CAM) is a miss, never pixel (0, 0).

    Args:
        cam: ``(H, W)`` map (a leading channel of 1 is dropped), on the mask's grid.
        mask: ``(H, W)`` bool lesion mask.
        tolerance: distance in pixels from the mask that still counts as a hit.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}.")
    m = _map(cam)
    truth = np.asarray(mask, dtype=bool)
    if m.shape != truth.shape:
        raise ValueError(f"map of shape {m.shape} and mask of shape {truth.shape} differ: put the map on the "
                         "mask's grid first.")
    peak = map_peak(m)
    if peak is None or not truth.any():
        return False
    r, c = min(int(peak[1]), m.shape[0] - 1), min(int(peak[0]), m.shape[1] - 1)
    if truth[r, c]:
        return True
    return bool(tolerance > 0 and ndimage.distance_transform_edt(~truth)[r, c] <= tolerance)


def _binarize(m: np.ndarray, threshold: float) -> np.ndarray:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1] (a fraction of the map's maximum), got {threshold!r}.")
    lo, hi = float(m.min()), float(m.max())
    if hi <= lo:
        return np.zeros(m.shape, dtype=bool)
    return (m - lo) >= threshold * (hi - lo)


def map_to_box(cam, threshold: float = 0.5) -> Box | None:
    """The box ``(x, y, w, h)`` of the largest connected region of the map at ``threshold`` x its range.

    The map is min-max scaled, kept where it is at least ``threshold``, and the bounding box of the largest
    8-connected region is returned (``None`` for a constant map).
    """
    binary = _binarize(_map(cam), threshold)
    if not binary.any():
        return None
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        binary = labels == (int(np.argmax(sizes)) + 1)
    rows, cols = np.nonzero(binary)
    return float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1)


def map_box_iou(cam, box: Sequence[float], threshold: float = 0.5) -> float:
    """IoU between the box of the thresholded map (:func:`map_to_box`) and ``box`` (0 for a constant map)."""
    pred = map_to_box(cam, threshold)
    return 0.0 if pred is None else box_iou(pred, box)


def mask_iou(cam, box: Sequence[float], threshold: float = 0.5) -> float:
    """IoU between the pixels of the map at ``threshold`` x its range and the pixels of ``box``."""
    m = _map(cam)
    binary = _binarize(m, threshold)
    target = box_mask(box, m.shape)
    union = int((binary | target).sum())
    return float((binary & target).sum()) / union if union else 0.0


def localization_scores(cam, box: Sequence[float], threshold: float = 0.5, tolerance: float = 0.0) -> dict:
    """Pointing-game hit, box IoU, IoBB and mask IoU of one map against one box (all in the map's pixel frame)."""
    pred = map_to_box(cam, threshold)
    return {
        "hit": pointing_game_hit(cam, box, tolerance),
        "iou": map_box_iou(cam, box, threshold),
        "iobb": 0.0 if pred is None else box_iobb(pred, box),
        "mask_iou": mask_iou(cam, box, threshold),
    }


def film_localization_scores(cam, box: Sequence[float], region_size: Sequence[int],
                             offset: Sequence[float] = (0.0, 0.0), film_size: Sequence[int] | None = None,
                             threshold: float = 0.5, tolerance: float = 0.0) -> dict:
    """Score a map of the network input against a box of the original film, as the literature does.

    The map covers ``region_size`` ``(H, W)`` film pixels starting at ``offset`` ``(row, col)`` (the whole film,
    or a lung crop of it). The pointing game maps the map's peak into the film and grows the box by
    ``tolerance`` *film* pixels; the centre guess is the film's centre scored the same way; IoU, IoBB and mask
    IoU are taken in the map's frame (the box scaled into it; ratios of areas do not depend on the frame).

    Args:
        cam: ``(H, W)`` map at the network input's size.
        box: ``(x, y, w, h)`` in film pixels (NIH ``BBox_List_2017.csv``).
        region_size: ``(H, W)`` of the film region the map covers.
        offset: ``(row, col)`` of that region in the film.
        film_size: ``(H, W)`` of the film (for the centre guess); ``None`` when the region is the whole film.
        threshold: fraction of the map's range kept for the IoUs.
        tolerance: pointing-game tolerance in film pixels (Zhang et al. used 15).

    Returns:
        ``{"hit", "centre_hit", "iou", "iobb", "mask_iou", "peak"}`` (``peak``: the map's point in film
        pixels, ``None`` for a constant map).
    """
    m = _map(cam)
    if film_size is None:
        if any(float(v) != 0.0 for v in offset):
            raise ValueError(f"a region at offset {tuple(offset)} needs the film_size of the whole film.")
        film_size = region_size
    (rh, rw), (fh, fw) = [float(v) for v in region_size], [float(v) for v in film_size]
    if min(rh, rw, fh, fw) <= 0:
        raise ValueError(f"sizes must be positive, got region_size={region_size!r}, film_size={film_size!r}.")
    in_map = scale_box(box, (rh, rw), m.shape, offset)
    peak = map_peak(m)
    if peak is not None:
        peak = (float(offset[1]) + peak[0] * rw / m.shape[1], float(offset[0]) + peak[1] * rh / m.shape[0])
    scores = localization_scores(m, in_map, threshold, 0.0)
    return {"hit": point_in_box(peak, box, tolerance), "centre_hit": point_in_box((fw / 2, fh / 2), box, tolerance),
            "iou": scores["iou"], "iobb": scores["iobb"], "mask_iou": scores["mask_iou"],
            "peak": None if peak is None else [round(peak[0], 2), round(peak[1], 2)]}


def _accuracy(values: list[float], thresholds: Sequence[float]) -> dict[str, float]:
    """Share of boxes with a value above each threshold (strictly, as Wang et al. 2017), keyed ``"0.1"``, ..."""
    v = np.asarray(values, dtype=np.float64)
    return {f"{t:g}": float(np.mean(v > t)) if v.size else float("nan") for t in thresholds}


def localization_report(records: Iterable[dict], label_names: Sequence[str] | None = None,
                        iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
                        iobb_thresholds: Sequence[float] = IOBB_THRESHOLDS) -> dict:
    """Aggregate per-box scores by finding: pointing-game hit rate, mean IoUs and localisation accuracies.

    Args:
        records: dicts with ``finding``, ``hit``, ``iou`` and ``mask_iou`` (e.g. from :func:`localization_scores`
            or :func:`film_localization_scores`); with ``iobb`` and ``centre_hit`` too, the report adds them.
        label_names: findings to report in this order (those without boxes get ``n_boxes`` 0 and ``nan``);
            ``None``: the findings seen, in order of appearance.
        iou_thresholds: T(IoU) of ``iou_accuracy``.
        iobb_thresholds: T(IoBB) of ``iobb_accuracy`` (Wang et al.'s Table 4 by default).

    Returns:
        ``{"n_boxes", "hit_rate", "mean_iou", "mean_mask_iou", "iou_accuracy": {T: share with IoU > T},
        "per_finding": {name: {...same keys...}}}`` plus, when the records carry them, ``centre_hit_rate``
        (the centre guess's pointing-game hit rate), ``mean_iobb`` and ``iobb_accuracy``; the overall figures
        are over all boxes.
    """
    records = list(records)
    names = list(label_names) if label_names is not None else list(dict.fromkeys(r["finding"] for r in records))
    has_iobb = bool(records) and all("iobb" in r for r in records)
    has_centre = bool(records) and all("centre_hit" in r for r in records)

    def _agg(rs: list[dict]) -> dict:
        nan = float("nan")
        out = {"n_boxes": len(rs),
               "hit_rate": float(np.mean([bool(r["hit"]) for r in rs])) if rs else nan,
               "mean_iou": float(np.mean([r["iou"] for r in rs])) if rs else nan,
               "mean_mask_iou": float(np.mean([r["mask_iou"] for r in rs])) if rs else nan,
               "iou_accuracy": _accuracy([r["iou"] for r in rs], iou_thresholds)}
        if has_centre:
            out["centre_hit_rate"] = float(np.mean([bool(r["centre_hit"]) for r in rs])) if rs else nan
        if has_iobb:
            out["mean_iobb"] = float(np.mean([r["iobb"] for r in rs])) if rs else nan
            out["iobb_accuracy"] = _accuracy([r["iobb"] for r in rs], iobb_thresholds)
        return out

    unknown = {r["finding"] for r in records} - set(names)
    if unknown:
        raise ValueError(f"records name findings {sorted(unknown)} that are not in {names}.")
    out = _agg(records)
    out["per_finding"] = {n: _agg([r for r in records if r["finding"] == n]) for n in names}
    return out
