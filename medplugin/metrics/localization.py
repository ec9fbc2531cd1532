"""Scoring class activation maps against ground-truth boxes: pointing game and IoU of the thresholded map.

- Pointing game (Zhang et al. 2016/2018, "Top-down Neural Attention by Excitation Backprop"): a hit when the
  map's maximum lies inside the box (optionally within ``tolerance`` pixels of it).
- IoU of the thresholded map (Wang et al. 2017, "ChestX-ray8", Sec. 4.2): the map is binarised at a fraction
  of its maximum, the bounding box of its largest connected region is taken as the predicted box, and its
  intersection over union with the ground-truth box is scored (``mask_iou`` gives the pixel-mask variant).

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
    "scale_box",
    "box_mask",
    "box_iou",
    "pointing_game_hit",
    "map_to_box",
    "map_box_iou",
    "mask_iou",
    "localization_scores",
    "localization_report",
]

Box = tuple[float, float, float, float]


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


def pointing_game_hit(cam, box: Sequence[float], tolerance: float = 0.0) -> bool:
    """Whether the map's maximum lies inside ``box`` (grown by ``tolerance`` pixels on every side).

    With several maxima (a plateau, e.g. where an upsampled map is clamped at its border), the point is the
    centroid of the maximal pixels. A constant map (no maximum) is a miss. ``box`` is in the map's pixel frame.
    """
    m = _map(cam)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}.")
    if m.max() <= m.min():
        return False
    x, y, w, h = _box(box)
    rows, cols = np.nonzero(m >= m.max())
    cx, cy = cols.mean() + 0.5, rows.mean() + 0.5  # centre of the maximal pixels
    return bool(x - tolerance <= cx <= x + w + tolerance and y - tolerance <= cy <= y + h + tolerance)


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
    """Pointing-game hit, box IoU and mask IoU of one map against one box (all in the map's pixel frame)."""
    return {
        "hit": pointing_game_hit(cam, box, tolerance),
        "iou": map_box_iou(cam, box, threshold),
        "mask_iou": mask_iou(cam, box, threshold),
    }


def localization_report(records: Iterable[dict], label_names: Sequence[str] | None = None) -> dict:
    """Aggregate per-box scores by finding: pointing-game hit rate and mean IoUs.

    Args:
        records: dicts with ``finding``, ``hit``, ``iou`` and ``mask_iou`` (e.g. from :func:`localization_scores`).
        label_names: findings to report in this order (those without boxes get ``n_boxes`` 0 and ``nan``);
            ``None``: the findings seen, in order of appearance.

    Returns:
        ``{"n_boxes", "hit_rate", "mean_iou", "mean_mask_iou", "per_finding": {name: {...same keys...}}}``; the
        overall figures are over all boxes.
    """
    records = list(records)
    names = list(label_names) if label_names is not None else list(dict.fromkeys(r["finding"] for r in records))

    def _agg(rs: list[dict]) -> dict:
        if not rs:
            return {"n_boxes": 0, "hit_rate": float("nan"), "mean_iou": float("nan"), "mean_mask_iou": float("nan")}
        return {
            "n_boxes": len(rs),
            "hit_rate": float(np.mean([bool(r["hit"]) for r in rs])),
            "mean_iou": float(np.mean([r["iou"] for r in rs])),
            "mean_mask_iou": float(np.mean([r["mask_iou"] for r in rs])),
        }

    unknown = {r["finding"] for r in records} - set(names)
    if unknown:
        raise ValueError(f"records name findings {sorted(unknown)} that are not in {names}.")
    out = _agg(records)
    out["per_finding"] = {n: _agg([r for r in records if r["finding"] == n]) for n in names}
    return out
