"""Synthetic colour fundus photographs with planted diabetic-retinopathy lesions.

Used by the fundus transform tests and the fundus bundle's smoke runs: every lesion is planted at a known
place, so lesion detection can be scored, and the planted lesions decide the DR grade of
:func:`make_eyepacs_demo`, so a CNN can learn referable DR (grade >= 2) from them.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["synthetic_fundus", "make_eyepacs_demo", "GRADE_LESIONS"]

logger = logging.getLogger(__name__)

#: lesion counts (low, high inclusive) per DR grade used by :func:`make_eyepacs_demo`:
#: microaneurysms (small dark dots), exudates (bright yellow dots), blotch haemorrhages and new-vessel tangles.
GRADE_LESIONS: dict[int, dict[str, tuple[int, int]]] = {
    0: {"n_dark": (0, 0), "n_bright": (0, 0), "n_blotch": (0, 0), "n_tangles": (0, 0)},
    1: {"n_dark": (1, 3), "n_bright": (0, 0), "n_blotch": (0, 0), "n_tangles": (0, 0)},
    2: {"n_dark": (4, 7), "n_bright": (2, 4), "n_blotch": (0, 0), "n_tangles": (0, 0)},
    3: {"n_dark": (8, 11), "n_bright": (5, 7), "n_blotch": (2, 3), "n_tangles": (0, 0)},
    4: {"n_dark": (8, 11), "n_bright": (5, 7), "n_blotch": (2, 3), "n_tangles": (1, 2)},
}


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _polyline_map(shape: tuple[int, int], points: list[np.ndarray], widths: list[float]) -> np.ndarray:
    """Render polylines (each a (K, 2) array of densely sampled (row, col)) as a soft 0..1 strength map."""
    out = np.zeros(shape, np.float32)
    # group by width so that each width needs one Gaussian filter
    for w in sorted(set(widths)):
        acc = np.zeros(shape, np.float32)
        for pts, pw in zip(points, widths):
            if pw != w:
                continue
            r = np.round(pts[:, 0]).astype(int)
            c = np.round(pts[:, 1]).astype(int)
            ok = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
            acc[r[ok], c[ok]] = 1.0
        sig = max(w / 2.0, 0.6)
        blurred = ndi.gaussian_filter(acc, sig)
        peak = ndi.gaussian_filter(np.pad(np.ones((1, 64), np.float32), ((32, 32), (0, 0))), sig)[32, 32]
        out = np.maximum(out, np.clip(blurred / max(float(peak), 1e-6), 0, 1))
    return out


def _curve(start: np.ndarray, angle: float, length: float, bend: float, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)
    theta = angle + bend * t
    step = length / (n - 1)
    dr = np.sin(theta) * step
    dc = np.cos(theta) * step
    return start[None, :] + np.stack([np.cumsum(dr) - dr[0], np.cumsum(dc) - dc[0]], axis=1)


def synthetic_fundus(
    size: int = 256,
    n_dark: int = 0,
    n_bright: int = 0,
    rng: np.random.Generator | int | None = None,
    n_blotch: int = 0,
    n_tangles: int = 0,
    side: str = "left",
    near_fovea: bool = True,
    noise: float = 2.0,
) -> dict[str, Any]:
    """Draw a synthetic colour fundus photograph with planted lesions at known places.

    The picture has a black background outside a circular field of view (FOV), an orange-red retina with an
    illumination fall-off towards the rim, a bright optic disc (diameter 1/6 of the FOV diameter), a vessel tree
    of curved dark lines leaving the disc (the temporal arcades arching around the macula plus nasal branches),
    and a darker macula with the fovea 2.5 disc diameters temporal of the disc. Lesions follow the appearance
    used in DR grading: microaneurysms are small round dark-red dots (radius 2-4 px at 256 px), blotch
    haemorrhages larger dark-red round blotches (radius 5-7 px at 256 px), hard exudates yellowish round bright
    dots (radius 2-4 px at 256 px), and new-vessel tangles thin looping vessels near the disc.

    Lesions lie inside the FOV, away from the disc, the vessels and each other, and (``near_fovea``) within two
    disc diameters of the fovea.

    Args:
        size: image side in pixels (the image is square), at least 48.
        n_dark: number of microaneurysms.
        n_bright: number of hard exudates.
        rng: a numpy ``Generator`` or a seed; ``None`` draws a fresh one (no global seeding).
        n_blotch: number of blotch haemorrhages (also listed in ``dark``).
        n_tangles: number of new-vessel-like tangles near the disc (not listed as lesions).
        side: ``"left"`` or ``"right"`` eye; the disc is on the nasal side (right of the image for a left
            eye as photographed, left for a right eye).
        near_fovea: keep lesions within two disc diameters of the fovea; otherwise anywhere in the FOV.
        noise: standard deviation of the additive Gaussian noise on the 0-255 scale.

    Returns:
        a dict with ``image`` (H, W, 3) uint8 RGB; ``dark`` (N, 3) float array of [row, col, radius] for the
        microaneurysms followed by the blotches; ``dark_kind`` list of ``"ma"``/``"blotch"``; ``bright``
        (M, 3) float array of [row, col, radius]; ``fovea`` and ``disc`` (row, col); ``disc_diameter``
        (pixels); ``fov`` (row, col, radius) of the FOV circle; ``mask`` (H, W) bool FOV mask.

    Raises:
        ValueError: for a bad size, negative counts, an unknown side, or when the lesions do not fit.
    """
    if not isinstance(size, (int, np.integer)) or size < 48:
        raise ValueError(f"size must be an int >= 48, got {size!r}")
    for name, val in (("n_dark", n_dark), ("n_bright", n_bright), ("n_blotch", n_blotch), ("n_tangles", n_tangles)):
        if not isinstance(val, (int, np.integer)) or val < 0:
            raise ValueError(f"{name} must be a non-negative int, got {val!r}")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    g = _rng(rng)
    s = size / 256.0
    H = W = int(size)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cy, cx = (H - 1) / 2.0 + g.uniform(-0.01, 0.01) * H, (W - 1) / 2.0 + g.uniform(-0.01, 0.01) * W
    R = 0.46 * size
    dist_c = np.hypot(yy - cy, xx - cx)
    mask = dist_c <= R
    dd = 2 * R / 6.0  # disc diameter
    nasal = 1.0 if side == "left" else -1.0
    disc = np.array([cy + g.uniform(-0.03, 0.03) * size, cx + nasal * 1.25 * dd])
    fovea = np.array([disc[0] + g.uniform(-0.1, 0.1) * dd, disc[1] - nasal * 2.5 * dd])

    # retina: orange-red with illumination fall-off and gentle low-frequency texture
    base = np.array([205.0, 95.0, 45.0], np.float32) * g.uniform(0.9, 1.1)
    illum = 1.0 - 0.45 * (dist_c / R) ** 2
    tex = ndi.gaussian_filter(g.standard_normal((H, W)).astype(np.float32), 6 * s)
    tex = tex / (tex.std() + 1e-6)
    illum = illum * (1.0 + 0.03 * tex)
    img = base[None, None, :] * illum[..., None]
    # macula: darker, smooth
    d_fov = np.hypot(yy - fovea[0], xx - fovea[1])
    img *= (1.0 - 0.28 * np.exp(-(d_fov**2) / (2 * (0.45 * dd) ** 2)))[..., None]
    # optic disc: bright yellowish, soft edge
    d_disc = np.hypot(yy - disc[0], xx - disc[1])
    disc_w = np.clip((dd / 2 - d_disc) / (1.5 * s) + 0.5, 0, 1)
    disc_col = np.array([250.0, 215.0, 150.0], np.float32)
    img = img * (1 - disc_w[..., None]) + disc_col * disc_w[..., None]

    # vessel tree
    curves, widths = [], []
    n_pts = int(120 * s) + 40
    for sgn in (-1.0, 1.0):  # superior/inferior temporal arcades, arching around the macula
        ang0 = np.arctan2(sgn * 1.0, -nasal * 0.35)
        bend = sgn * nasal * 1.3
        arc = _curve(disc, ang0, 3.4 * dd, bend, n_pts)
        curves.append(arc)
        widths.append(2.6 * s)
        for _ in range(2):  # branches
            k = int(g.uniform(0.3, 0.7) * n_pts)
            ang = np.arctan2(arc[k, 0] - arc[k - 1, 0], arc[k, 1] - arc[k - 1, 1]) + g.uniform(0.4, 0.8) * sgn
            curves.append(_curve(arc[k], ang, g.uniform(1.0, 1.6) * dd, g.uniform(-0.5, 0.5), n_pts // 2))
            widths.append(1.6 * s)
    for ang in (np.arctan2(-0.6, nasal), np.arctan2(0.6, nasal)):  # nasal vessels
        curves.append(_curve(disc, ang + g.uniform(-0.2, 0.2), 2.0 * dd, g.uniform(-0.4, 0.4), n_pts // 2))
        widths.append(2.0 * s)
    tangle_curves = []
    for _ in range(n_tangles):  # neovascularisation: thin looping vessels near the disc
        a = g.uniform(0, 2 * np.pi)
        start = disc + 0.6 * dd * np.array([np.sin(a), np.cos(a)])
        tpts = []
        for j in range(4):
            c = _curve(start, g.uniform(0, 2 * np.pi), 0.7 * dd, g.uniform(4.0, 7.0) * (-1) ** j, n_pts // 2)
            tpts.append(c)
            start = c[-1]
        tangle_curves.extend(tpts)
    vessels = _polyline_map((H, W), curves, widths)
    if tangle_curves:
        vessels = np.maximum(vessels, 0.8 * _polyline_map((H, W), tangle_curves, [1.2 * s] * len(tangle_curves)))
    vessel_col = np.array([120.0, 25.0, 20.0], np.float32)
    vw = 0.75 * vessels * (1 - 0.7 * disc_w)
    img = img * (1 - vw[..., None]) + vessel_col * illum[..., None] * vw[..., None]

    # lesions
    vessel_near = ndi.distance_transform_edt(vessels < 0.1)
    placed: list[tuple[float, float, float]] = []

    def place(radius: float) -> tuple[float, float]:
        for _ in range(3000):
            if near_fovea:
                rr = np.sqrt(g.uniform(0.0, 1.0)) * (2.0 * dd - radius - 2)
                a = g.uniform(0, 2 * np.pi)
                p = fovea + rr * np.array([np.sin(a), np.cos(a)])
            else:
                rr = np.sqrt(g.uniform(0.0, 1.0)) * (R - 3 * radius - 4 * s)
                a = g.uniform(0, 2 * np.pi)
                p = np.array([cy, cx]) + rr * np.array([np.sin(a), np.cos(a)])
            if np.hypot(p[0] - cy, p[1] - cx) > R - 3 * radius - 4 * s:
                continue
            if np.hypot(*(p - disc)) < dd / 2 + 3 * radius + 4 * s:
                continue
            ir, ic = int(round(p[0])), int(round(p[1]))
            if vessel_near[ir, ic] < radius + 3 * s:
                continue
            if any(np.hypot(p[0] - q[0], p[1] - q[1]) < 2.5 * (radius + q[2]) + 4 * s for q in placed):
                continue
            placed.append((float(p[0]), float(p[1]), float(radius)))
            return float(p[0]), float(p[1])
        raise ValueError(f"could not place {n_dark + n_blotch + n_bright} lesions at size {size}: too many")

    dark, kinds, bright = [], [], []
    for _ in range(n_blotch):
        r = g.uniform(5.0, 7.0) * s
        dark.append((*place(r), r))
        kinds.append("blotch")
    for _ in range(n_dark):
        r = g.uniform(2.0, 4.0) * s
        dark.append((*place(r), r))
        kinds.append("ma")
    for _ in range(n_bright):
        r = g.uniform(2.0, 4.0) * s
        bright.append((*place(r), r))
    ma_col = np.array([110.0, 20.0, 15.0], np.float32)
    ex_col = np.array([245.0, 225.0, 120.0], np.float32)
    for (r0, c0, rad), col, strength in [(d, ma_col, 0.85) for d in dark] + [(b, ex_col, 0.9) for b in bright]:
        lo_r, hi_r = max(int(r0 - rad - 4), 0), min(int(r0 + rad + 5), H)
        lo_c, hi_c = max(int(c0 - rad - 4), 0), min(int(c0 + rad + 5), W)
        d = np.hypot(yy[lo_r:hi_r, lo_c:hi_c] - r0, xx[lo_r:hi_r, lo_c:hi_c] - c0)
        wgt = strength * np.clip(rad - d + 0.5, 0, 1)[..., None]
        patch = img[lo_r:hi_r, lo_c:hi_c]
        img[lo_r:hi_r, lo_c:hi_c] = patch * (1 - wgt) + col * illum[lo_r:hi_r, lo_c:hi_c, None] ** 0.5 * wgt

    img = img + g.normal(0.0, noise, img.shape).astype(np.float32)
    # soft rim and black background (JPEG-like dark noise outside)
    rim = np.clip((R - dist_c) / (1.5 * s) + 0.5, 0, 1)
    img = img * rim[..., None] + np.abs(g.normal(0.0, 1.0, img.shape)) * (1 - rim[..., None])
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return {
        "image": image,
        "dark": np.asarray(dark, np.float32).reshape(-1, 3),
        "dark_kind": kinds,
        "bright": np.asarray(bright, np.float32).reshape(-1, 3),
        "fovea": (float(fovea[0]), float(fovea[1])),
        "disc": (float(disc[0]), float(disc[1])),
        "disc_diameter": float(dd),
        "fov": (float(cy), float(cx), float(R)),
        "mask": mask,
    }


def _draw_counts(grade: int, g: np.random.Generator) -> dict[str, int]:
    return {k: int(g.integers(lo, hi + 1)) for k, (lo, hi) in GRADE_LESIONS[grade].items()}


def make_eyepacs_demo(
    out_dir: str | os.PathLike,
    n_patients: int = 10,
    size: int = 256,
    seed: int = 0,
    n_test_patients: int | None = None,
    quality: int = 95,
) -> dict[str, Any]:
    """Write a small synthetic data set in the Kaggle EyePACS (Diabetic Retinopathy Detection 2015) layout.

    Layout::

        out_dir/train/<patient>_left.jpeg, <patient>_right.jpeg
        out_dir/trainLabels.csv        header ``image,level``; image without extension, e.g. ``1_left``
        out_dir/test/<patient>_left.jpeg, ...
        out_dir/testLabels.csv         same columns (our convention: Kaggle published the test labels later as
                                       ``retinopathy_solution.csv``; reading that name is the indexer's job)

    Each eye gets a DR grade 0-4 (every grade is used in turn, shuffled) and lesions drawn from
    :data:`GRADE_LESIONS`: 0 none; 1 a few microaneurysms only; 2 more microaneurysms and some exudates; 3 many
    of both plus blotch haemorrhages; 4 as 3 plus new-vessel tangles. Referable DR is grade >= 2. Lesions lie
    within two disc diameters of the fovea, or anywhere in the retina for an eye whose lesions do not fit there.
    Deterministic for a seed (a local numpy ``Generator``; no global seeding). Rows are sorted by patient id,
    left before right, as in Kaggle's CSV.

    Args:
        out_dir: destination folder (created).
        n_patients: training patients (two eyes each), >= 1.
        size: image side in pixels, >= 48.
        seed: seed of the local random generator.
        n_test_patients: held-out patients; default ``max(1, n_patients // 5)``.
        quality: JPEG quality (1-100).

    Returns:
        summary dict: ``{"train": {grade: count}, "test": {grade: count}, "n_images": int, "records": [...]}``
        where each record is ``{"split", "image", "level", "n_dark", "n_bright", "n_blotch", "n_tangles",
        "lesions"}``; ``lesions`` lists ``[row, col, radius]`` in image pixels of every planted lesion
        (microaneurysms, blotches, exudates; not the new-vessel tangles), for scoring where a model looked.

    Raises:
        ValueError: for bad counts, size or quality.
    """
    from PIL import Image

    if not isinstance(n_patients, (int, np.integer)) or n_patients < 1:
        raise ValueError(f"n_patients must be an int >= 1, got {n_patients!r}")
    if n_test_patients is None:
        n_test_patients = max(1, n_patients // 5)
    if not isinstance(n_test_patients, (int, np.integer)) or n_test_patients < 0:
        raise ValueError(f"n_test_patients must be a non-negative int, got {n_test_patients!r}")
    if not isinstance(size, (int, np.integer)) or size < 48:
        raise ValueError(f"size must be an int >= 48, got {size!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality!r}")
    g = np.random.default_rng(seed)
    out = Path(out_dir)
    summary: dict[str, Any] = {"train": {}, "test": {}, "n_images": 0, "records": []}
    splits = (("train", 1, n_patients), ("test", n_patients + 1, n_test_patients))
    for split, first_id, n in splits:
        if n == 0:
            continue
        (out / split).mkdir(parents=True, exist_ok=True)
        n_eyes = 2 * n
        grades = np.resize(np.arange(5), n_eyes)
        g.shuffle(grades)
        rows = []
        for i in range(n_eyes):
            pid = first_id + i // 2
            side = "left" if i % 2 == 0 else "right"
            grade = int(grades[i])
            counts = _draw_counts(grade, g)
            try:
                fundus = synthetic_fundus(size=size, rng=g, side=side, **counts)
            except ValueError:  # many lesions do not always fit around the macula: use the whole retina
                fundus = synthetic_fundus(size=size, rng=g, side=side, near_fovea=False, **counts)
            name = f"{pid}_{side}"
            Image.fromarray(fundus["image"]).save(out / split / f"{name}.jpeg", quality=int(quality))
            rows.append((name, grade))
            planted = np.concatenate([fundus["dark"], fundus["bright"]]).round(2).tolist()
            summary["records"].append({"split": split, "image": name, "level": grade, **counts, "lesions": planted})
        label_file = out / ("trainLabels.csv" if split == "train" else "testLabels.csv")
        with open(label_file, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["image", "level"])
            w.writerows(rows)
        summary[split] = dict(sorted(Counter(r[1] for r in rows).items()))
        summary["n_images"] += len(rows)
    logger.info("wrote %d synthetic EyePACS images to %s", summary["n_images"], out)
    return summary
