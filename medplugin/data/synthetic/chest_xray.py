"""Synthetic chest radiographs with planted, localisable findings, and demo datasets in real release layouts.

The phantom is a caricature, not a simulation: a bright body with two dark lung fields, a spine and heart
shadow, faint rib arcs, smooth "lung markings" and noise. Each of the 14 ChestX-ray14 findings is a distinct
local pattern with a known box, so that a classifier can learn it and a CAM can be checked against the box.
All randomness comes from a local :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medplugin.data.chestxray14 import FINDINGS
from medplugin.utils import atomic_write

__all__ = ["synthetic_chest_xray", "make_chestxray14_demo", "make_lung_seg_demo"]

_MIN_SIZE = 32

# gray levels in 0..1 before the final scaling to uint8
_AIR, _TISSUE, _LUNG, _SPINE, _HEART = 0.04, 0.55, 0.24, 0.72, 0.66


def _rng(rng: Any) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be None, an int seed or a numpy Generator, got {type(rng).__name__} {rng!r}.")


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the True pixels of ``mask``."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise RuntimeError("internal error: a planted finding has an empty footprint")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(sigma, 0.5))
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


def synthetic_chest_xray(
    size: int = 256, findings: Sequence[str] = (), rng: np.random.Generator | int | None = None
) -> dict[str, Any]:
    """A synthetic frontal chest radiograph with the given findings planted at known places.

    Anatomy is in radiological convention: the patient's right lung is on the image's left. The patterns:

    - Atelectasis: a dense, slightly tilted plate-like band in a lower lung;
    - Cardiomegaly: a heart shadow about 1.5 times wider (its box is the heart);
    - Effusion: a bright fluid layer at a lung base with a meniscus rising laterally;
    - Infiltration: patchy, blotchy opacities in a round region;
    - Mass: a large bright blob (two overlapping soft discs);
    - Nodule: a small bright disc;
    - Pneumonia: a fluffy, textured, soft-edged opacity in a lower lung;
    - Pneumothorax: a dark crescent without lung markings along the lateral upper lung edge;
    - Consolidation: a homogeneous dense wedge with sharp edges;
    - Edema: a symmetric perihilar haze in both lungs ("bat wings", one box over both);
    - Emphysema: dark round bullae with thin bright rims in an upper lung;
    - Fibrosis: a fine bright reticular net at a lower lung periphery;
    - Pleural_Thickening: a bright band along the lateral lung wall;
    - Hernia: a round retrocardiac density with a dark gas cap (an air-fluid level) above it.

    Args:
        size: height and width in pixels, at least 32.
        findings: names from :data:`medplugin.data.chestxray14.FINDINGS`, each at most once.
        rng: a numpy Generator, an int seed, or ``None`` for fresh entropy.

    Returns:
        dict with ``image`` (size x size uint8), ``lung_mask`` (uint8 0/1, both lungs, without the heart),
        ``left_lung_mask`` and ``right_lung_mask`` (the patient's left lung is on the image's right), and
        ``boxes``: finding -> ``(x, y, w, h)`` in pixels (x to the right, y down).

    Raises:
        ValueError: for a size below 32, an unknown or repeated finding, or a bad ``rng``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ValueError(f"size must be an int >= {_MIN_SIZE}, got {size!r}.")
    if isinstance(findings, str):
        raise ValueError(f"findings must be a sequence of finding names, got the string {findings!r}.")
    findings = list(findings)
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}: expected names from {list(FINDINGS)}.")
    if len(set(findings)) != len(findings):
        raise ValueError(f"each finding can be planted once, got {findings}.")
    g = _rng(rng)
    n = int(size)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) / n  # normalised coordinates

    def jit(scale: float) -> float:
        return float(g.uniform(-scale, scale))

    # anatomy, with a little jitter per image
    body = _ellipse(yy, xx, 0.56 + jit(0.01), 0.5 + jit(0.01), 0.56, 0.47 + jit(0.02))
    lungs = {
        # patient's right lung: image left
        "right": (0.45 + jit(0.015), 0.30 + jit(0.015), 0.29 + jit(0.015), 0.135 + jit(0.01)),
        "left": (0.46 + jit(0.015), 0.70 + jit(0.015), 0.28 + jit(0.015), 0.125 + jit(0.01)),
    }
    heart_scale = 1.5 if "Cardiomegaly" in findings else 1.0
    heart = (0.63 + jit(0.01), 0.55 + jit(0.01), 0.11, 0.105 * heart_scale)
    heart_mask = _ellipse(yy, xx, *heart)
    lung_masks = {k: _ellipse(yy, xx, *v) & ~heart_mask for k, v in lungs.items()}
    lung_any = lung_masks["left"] | lung_masks["right"]

    img = np.full((n, n), _AIR)
    img[body] = _TISSUE
    img[lung_any] = _LUNG
    # lung markings: smooth texture inside the lungs
    markings = _smooth_noise(g, (n, n), n / 64)
    img += np.where(lung_any, 0.035 * markings, 0.0)
    # ribs: faint posterior arcs over the lungs
    ribs = np.zeros((n, n), dtype=bool)
    thick = max(0.012, 1.0 / n)
    for side, (cy, _cx, ry, _rx) in lungs.items():
        for k in range(7):
            y0 = cy - ry * 0.85 + k * (ry * 1.8 / 7)
            arc = y0 + 0.08 * (np.abs(xx - 0.5) / 0.4) ** 2  # posterior ribs descend laterally
            ribs |= (np.abs(yy - arc) < thick) & lung_masks[side]
    img[ribs] += 0.07
    # spine and heart over everything in the middle
    spine = (np.abs(xx - 0.5) < 0.045) & body
    img[spine] = np.maximum(img[spine], _SPINE)
    img[heart_mask] = _HEART

    boxes: dict[str, tuple[int, int, int, int]] = {}

    def point_in(side: str, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
        """A point of lung ``side`` at elliptic coordinates: a (vertical) and b (lateral, + = outwards)."""
        cy, cx, ry, rx = lungs[side]
        outward = -1.0 if side == "right" else 1.0
        v, u = g.uniform(*a), g.uniform(*b)
        return cy + v * ry, cx + outward * u * rx

    def pick_side() -> str:
        return "right" if g.random() < 0.5 else "left"

    r_px = 1.0 / n  # one pixel in normalised units
    for finding in findings:
        side = pick_side()
        cy, cx, ry, rx = lungs[side]
        outward = -1.0 if side == "right" else 1.0
        lung = lung_masks[side]
        if finding == "Nodule":
            py, px = point_in(side, (-0.4, 0.4), (-0.4, 0.4))
            r = max(0.02, 1.6 * r_px)
            m = _ellipse(yy, xx, py, px, r, r)
            img[m] += 0.38
        elif finding == "Mass":
            py, px = point_in(side, (-0.3, 0.3), (-0.2, 0.2))
            r = max(0.06, 4 * r_px)
            lobe = _ellipse(yy, xx, py + 0.5 * r, px + 0.6 * r * outward, 0.7 * r, 0.7 * r)
            m = _ellipse(yy, xx, py, px, r, r) | lobe
            d = ndimage.distance_transform_edt(m)
            img[m] += 0.2 + 0.25 * np.clip(d[m] / max(d.max(), 1), 0, 1)
        elif finding == "Effusion":
            base = cy + ry * (0.55 + jit(0.05))
            meniscus = base - 0.25 * ry * ((xx - cx) * outward / rx).clip(0, 1) ** 2 * 2
            m = lung & (yy > meniscus)
            img[m] = 0.6 + 0.02 * markings[m]
        elif finding == "Pneumothorax":
            inner = _ellipse(yy, xx, cy + 0.12 * ry, cx - outward * 0.3 * rx, ry * 0.9, rx * 0.7)
            m = lung & ~inner & (yy < cy + 0.1 * ry)
            img[m] = 0.05  # no markings, no ribs: free air
        elif finding == "Cardiomegaly":
            m = heart_mask
        elif finding == "Atelectasis":
            py, px = point_in(side, (0.2, 0.45), (-0.1, 0.1))
            angle = g.uniform(-0.25, 0.25)
            along = (xx - px) * np.cos(angle) + (yy - py) * np.sin(angle)
            across = -(xx - px) * np.sin(angle) + (yy - py) * np.cos(angle)
            m = (np.abs(along) < 0.6 * rx) & (np.abs(across) < max(0.018, 1.2 * r_px)) & lung
            img[m] = 0.62
        elif finding == "Infiltration":
            py, px = point_in(side, (-0.2, 0.3), (-0.2, 0.2))
            r = max(0.08, 5 * r_px)
            region = _ellipse(yy, xx, py, px, r, r) & lung
            blotches = _smooth_noise(g, (n, n), max(n / 96, 0.7)) > -0.2
            m = region & blotches
            if not m.any():
                m = region
            img[m] += 0.276
        elif finding == "Pneumonia":
            py, px = point_in(side, (0.1, 0.35), (-0.15, 0.15))
            r = max(0.09, 5 * r_px)
            prof = np.exp(-(((yy - py) ** 2 + (xx - px) ** 2) / (2 * (0.5 * r) ** 2)))
            fluff = 0.5 + 0.5 * np.clip(_smooth_noise(g, (n, n), max(n / 128, 0.6)), -1, 1)
            m = (prof > 0.25) & lung
            img[m] += (0.45 * prof * (0.5 + 0.5 * fluff))[m]
        elif finding == "Consolidation":
            py, px = point_in(side, (-0.05, 0.25), (-0.1, 0.1))
            h = max(0.1, 6 * r_px)
            # a wedge: a triangle pointing to the hilum, base at the lateral wall
            t = (xx - px) * outward  # 0 at apex, growing outwards
            m = (t >= 0) & (t <= 0.9 * rx) & (np.abs(yy - py) <= h * (0.2 + t / (0.9 * rx))) & lung
            img[m] = 0.58
        elif finding == "Edema":
            ms = []
            for s in ("right", "left"):
                scy, scx, sry, srx = lungs[s]
                hy, hx = scy + 0.1 * sry, scx - (-1.0 if s == "right" else 1.0) * 0.45 * srx  # near the hilum
                prof = np.exp(-(((yy - hy) / (0.45 * sry)) ** 2 + ((xx - hx) / (0.7 * srx)) ** 2))
                mm = (prof > 0.3) & lung_masks[s]
                img[mm] += (0.3 * prof)[mm]
                ms.append(mm)
            m = ms[0] | ms[1]
        elif finding == "Emphysema":
            m = np.zeros((n, n), dtype=bool)
            for _ in range(3):
                py, px = point_in(side, (-0.65, -0.2), (-0.4, 0.4))
                r = max(0.03, 2 * r_px)
                disc = _ellipse(yy, xx, py, px, r, r) & lung
                rim = _ellipse(yy, xx, py, px, r + max(0.006, r_px), r + max(0.006, r_px)) & lung & ~disc
                img[rim] += 0.12
                img[disc] = 0.07
                m |= disc | rim
        elif finding == "Fibrosis":
            py, px = point_in(side, (0.15, 0.4), (0.3, 0.5))
            r = max(0.08, 5 * r_px)
            region = _ellipse(yy, xx, py, px, r, r) & lung
            period = max(0.03, 3 * r_px)
            net = (np.abs(np.sin(np.pi * xx / period)) < 0.3) | (np.abs(np.sin(np.pi * (yy + 0.5 * xx) / period)) < 0.3)
            m = region & net
            if not m.any():
                m = region
            img[m] += 0.27
        elif finding == "Pleural_Thickening":
            shell = lung & ~ndimage.binary_erosion(lung, iterations=max(1, round(0.025 * n)))
            lateral = (xx - cx) * outward > 0.35 * rx
            m = shell & lateral & (yy < cy + 0.2 * ry) & (yy > cy - 0.6 * ry)
            img[m] = 0.62
        elif finding == "Hernia":
            hy, hx = cy + 0.7 * ry, 0.5 + outward * 0.06
            r = max(0.055, 3.5 * r_px)
            disc = _ellipse(yy, xx, hy, hx, r, r)
            gas = disc & (yy < hy - 0.2 * r)
            img[disc & ~gas] = 0.68
            img[gas] = 0.12
            m = disc
        else:  # pragma: no cover - guarded by the FINDINGS check above
            raise ValueError(f"unknown finding {finding!r}.")
        if not m.any():  # tiny images: fall back to a visible nodule-like dot so the box is never empty
            py, px = point_in(side, (-0.3, 0.3), (-0.3, 0.3))
            m = _ellipse(yy, xx, py, px, 1.5 * r_px, 1.5 * r_px)
            img[m] += 0.3
        boxes[finding] = _box_of(m)

    img += g.normal(0.0, 0.015, size=(n, n))
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return {
        "image": image,
        "lung_mask": lung_any.astype(np.uint8),
        "left_lung_mask": lung_masks["left"].astype(np.uint8),
        "right_lung_mask": lung_masks["right"].astype(np.uint8),
        "boxes": boxes,
    }


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    def _w(tmp: str) -> None:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(tmp, format="PNG")

    atomic_write(path, _w)


def _write_text(path: Path, text: str) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)

    atomic_write(path, _w)


def _check_count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


# the real Data_Entry_2017.csv header: the bracketed column names hold commas, hence 12 header fields
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


def make_chestxray14_demo(
    out_dir: str | os.PathLike,
    n_patients: int = 20,
    size: int = 128,
    seed: int = 0,
    max_follow_ups: int = 4,
    test_fraction: float = 0.2,
    findings: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write a small synthetic dataset in the exact NIH ChestX-ray14 release layout.

    Writes ``images_001/images/<8-digit patient>_<3-digit follow-up>.png``, ``Data_Entry_2017.csv`` (real
    header, ``Patient ID`` without leading zeros as in the release), ``train_val_list.txt`` and
    ``test_list.txt`` (patient-disjoint), and ``BBox_List_2017.csv`` (real header; the finding
    ``Infiltration`` written ``Infiltrate`` as in the release; unlike the release, every planted finding has a
    box). About 40 % of the images have no finding; the others one or two.

    Args:
        out_dir: the folder to write (created; existing files of the same names are replaced).
        n_patients: number of patients, at least 1.
        size: image size in pixels, at least 32.
        seed: seed of the local random generator; the same seed writes the same files.
        max_follow_ups: each patient has 1..max_follow_ups images.
        test_fraction: fraction of the patients listed in ``test_list.txt`` (at least one when there are two
            or more patients).
        findings: the findings planted (default: all 14). Labels are always the 14 of the release; a
            subset gives a quicker demo (the other findings then have no positive image).

    Returns:
        dict with ``root``, ``csv``, ``bbox_csv`` (paths as str), ``n_images`` and ``n_patients``.

    Raises:
        ValueError: for invalid arguments.
    """
    n_patients = _check_count("n_patients", n_patients)
    size = _check_count("size", size, _MIN_SIZE)
    max_follow_ups = _check_count("max_follow_ups", max_follow_ups)
    pool = FINDINGS if findings is None else tuple(findings)
    if isinstance(findings, str) or not pool or any(f not in FINDINGS for f in pool) or len(set(pool)) != len(pool):
        raise ValueError(f"findings must be distinct names from {list(FINDINGS)}, got {findings!r}.")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}.")
    g = np.random.default_rng(seed)
    root = Path(out_dir)
    img_dir = root / "images_001" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    order = g.permutation(n_patients)
    n_test = int(round(test_fraction * n_patients))
    if n_patients >= 2 and test_fraction > 0:
        n_test = min(max(n_test, 1), n_patients - 1)
    test_patients = {int(i) + 1 for i in order[:n_test]}

    entries, bbox_rows, train_val, test = [], [], [], []
    spacing = round(400.0 / size, 3)
    for pid in range(1, n_patients + 1):
        age = int(g.integers(18, 90))
        gender = "M" if g.random() < 0.5 else "F"
        for fu in range(int(g.integers(1, max_follow_ups + 1))):
            name = f"{pid:08d}_{fu:03d}.png"
            if g.random() < 0.4:
                found: list[str] = []
            else:
                k = 1 if g.random() < 0.7 or len(pool) < 2 else 2
                found = sorted(str(f) for f in g.choice(pool, size=k, replace=False))
            view = "PA" if g.random() < 0.7 else "AP"
            sample = synthetic_chest_xray(size=size, findings=found, rng=g)
            _write_png(img_dir / name, sample["image"])
            labels = "|".join(found) if found else "No Finding"
            entries.append([name, labels, fu, pid, age + fu // 2, gender, view, size, size, spacing, spacing])
            for f in found:
                x, y, w, h = sample["boxes"][f]
                written = "Infiltrate" if f == "Infiltration" else f  # the release's spelling in this file
                bbox_rows.append([name, written, float(x), float(y), float(w), float(h)])
            (test if pid in test_patients else train_val).append(name)

    def _csv(header: str, rows: list[list]) -> str:
        buf = io.StringIO()
        buf.write(header + "\n")
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue()

    _write_text(root / "Data_Entry_2017.csv", _csv(DATA_ENTRY_HEADER, entries))
    _write_text(root / "BBox_List_2017.csv", _csv(BBOX_HEADER, bbox_rows))
    _write_text(root / "train_val_list.txt", "".join(f"{n}\n" for n in train_val))
    _write_text(root / "test_list.txt", "".join(f"{n}\n" for n in test))
    return {
        "root": str(root),
        "csv": str(root / "Data_Entry_2017.csv"),
        "bbox_csv": str(root / "BBox_List_2017.csv"),
        "n_images": len(entries),
        "n_patients": n_patients,
    }


def make_lung_seg_demo(
    out_dir: str | os.PathLike, n: int = 8, size: int = 128, seed: int = 0
) -> dict[str, Any]:
    """Write a small synthetic lung segmentation set in the Montgomery County (MC) chest X-ray layout.

    Writes ``CXR_png/MCUCXR_0001_0.png`` (the last digit: 0 normal, 1 abnormal, as in the release),
    ``ManualMask/leftMask/MCUCXR_0001_0.png`` and ``ManualMask/rightMask/MCUCXR_0001_0.png`` (0/255 masks;
    ``leftMask`` is the patient's left lung, on the image's right). About half the images are abnormal,
    with one of Consolidation, Infiltration, Effusion, Pneumothorax, Nodule, Fibrosis planted.

    Args:
        out_dir: the folder to write (created).
        n: number of images, at least 1.
        size: image size in pixels, at least 32.
        seed: seed of the local random generator.

    Returns:
        dict with ``root`` (str) and ``images``: the image file names written.

    Raises:
        ValueError: for invalid arguments.
    """
    n = _check_count("n", n)
    size = _check_count("size", size, _MIN_SIZE)
    g = np.random.default_rng(seed)
    root = Path(out_dir)
    abnormal_findings = ("Consolidation", "Infiltration", "Effusion", "Pneumothorax", "Nodule", "Fibrosis")
    names = []
    for i in range(1, n + 1):
        abnormal = bool(g.random() < 0.5)
        found = [str(g.choice(abnormal_findings))] if abnormal else []
        sample = synthetic_chest_xray(size=size, findings=found, rng=g)
        name = f"MCUCXR_{i:04d}_{int(abnormal)}.png"
        _write_png(root / "CXR_png" / name, sample["image"])
        _write_png(root / "ManualMask" / "leftMask" / name, sample["left_lung_mask"] * np.uint8(255))
        _write_png(root / "ManualMask" / "rightMask" / name, sample["right_lung_mask"] * np.uint8(255))
        names.append(name)
    return {"root": str(root), "images": names}
