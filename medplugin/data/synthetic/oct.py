"""Synthetic retinal OCT B-scans in the Kermany OCT2017 layout, with one planted lesion type per class.

CNV: a sub-retinal fluid pocket (dark dome) over a bright fibrovascular mass; DME: intraretinal cysts (small
dark round pockets); DRUSEN: bumps of the retinal pigment epithelium; NORMAL: none. Images are layered like
a B-scan (nerve fibre layer, nuclear and plexiform layers, photoreceptor line, RPE, choroid) with a foveal
pit and multiplicative speckle, so a network must find the lesion, not a global cue.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medplugin.data.oct2017 import CLASSES

__all__ = ["synthetic_oct_bscan", "make_oct2017_demo"]


def synthetic_oct_bscan(
    label: int | str, size: tuple[int, int] = (128, 160), rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic B-scan.

    Args:
        label: class index or name in ``CLASSES``.
        size: ``(height, width)`` in pixels (at least 48 x 48).
        rng: random generator (a fresh unseeded one if ``None``).

    Returns:
        ``(image, lesion_mask)``: uint8 ``(H, W)`` and bool ``(H, W)`` (all False for NORMAL).
    """
    cls = CLASSES.index(label) if isinstance(label, str) else int(label)
    if not 0 <= cls < len(CLASSES):
        raise ValueError(f"label must be one of {list(CLASSES)} or 0..3, got {label!r}.")
    h, w = int(size[0]), int(size[1])
    if h < 48 or w < 48:
        raise ValueError(f"size must be at least (48, 48), got {size!r}.")
    rng = rng or np.random.default_rng()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x = np.arange(w, dtype=np.float32)

    # retina geometry: a gently curved, tilted band with a foveal pit
    top = (
        h * rng.uniform(0.28, 0.38)
        + h * rng.uniform(-0.05, 0.05) * (x / w - 0.5)
        + h * 0.03 * np.cos(2 * np.pi * (x / w - 0.5))
    )
    fovea_x = w * rng.uniform(0.4, 0.6)
    top = top + h * 0.06 * np.exp(-(((x - fovea_x) / (0.08 * w)) ** 2))
    thick = h * rng.uniform(0.26, 0.32)
    rpe = top + thick + h * 0.02 * np.exp(-(((x - fovea_x) / (0.1 * w)) ** 2))
    rpe = rpe[None, :].repeat(h, 0)
    top2d = top[None, :].repeat(h, 0)
    mask = np.zeros((h, w), bool)

    cx = w * rng.uniform(0.3, 0.7)
    if cls == 2:  # DRUSEN: RPE bumps
        for _ in range(rng.integers(3, 6)):
            bx = np.clip(cx + rng.normal(0, 0.12 * w), 0.1 * w, 0.9 * w)
            bw, bh = w * rng.uniform(0.03, 0.045), h * rng.uniform(0.08, 0.12)
            bump = bh * np.exp(-(((x - bx) / bw) ** 2))
            rpe = rpe - bump[None, :]
            mask |= (np.abs(xx - bx) < 1.8 * bw) & (yy > rpe - 3) & (yy < rpe + bh + 3)

    rel = (yy - top2d) / np.maximum(rpe - top2d, 1)
    img = np.full((h, w), 18.0, np.float32)
    retina = (rel >= 0) & (rel <= 1)
    layers = np.interp(rel, [0, 0.08, 0.12, 0.3, 0.42, 0.55, 0.78, 0.86, 0.9, 0.94, 1.0],
                       [40, 170, 110, 95, 60, 90, 55, 75, 190, 120, 210])
    img = np.where(retina, layers, img)
    below = (yy > rpe) & (yy < rpe + h * 0.12)
    img = np.where(below, 150 - 700 * (yy - rpe) / h, img)
    img = np.where((yy >= rpe + h * 0.12), 30, img)

    if cls == 0:  # CNV: sub-retinal fluid pocket + bright fibrovascular mass
        fw, fh = w * rng.uniform(0.10, 0.14), h * rng.uniform(0.07, 0.10)
        base = rpe[0, int(np.clip(cx, 0, w - 1))]
        dome = ((xx - cx) / fw) ** 2 + ((yy - (base - 0.2 * fh)) / fh) ** 2 < 1
        dome &= yy < base
        img = np.where(dome, 12, img)
        mass = ((xx - cx) / (0.7 * fw)) ** 2 + ((yy - base) / (0.45 * fh)) ** 2 < 1
        img = np.where(mass, 235, img)
        mask |= dome | mass
    elif cls == 1:  # DME: intraretinal cysts in a thickened inner retina
        for _ in range(rng.integers(3, 6)):
            px = np.clip(cx + rng.normal(0, 0.1 * w), 0.1 * w, 0.9 * w)
            col = int(np.clip(px, 0, w - 1))
            py = top[col] + (rpe[0, col] - top[col]) * rng.uniform(0.3, 0.65)
            r = min(h, w) * rng.uniform(0.025, 0.045)
            cyst = ((xx - px) ** 2 + (yy - py) ** 2) < r**2
            img = np.where(cyst, 10, img)
            mask |= cyst

    img = img * rng.gamma(8.0, 1 / 8.0, size=img.shape)  # multiplicative speckle
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_oct2017_demo(
    out_dir: str | os.PathLike,
    train_patients: int = 12,
    test_patients: int = 4,
    images_per_patient: int = 4,
    size: tuple[int, int] = (128, 160),
    seed: int = 0,
    return_masks: bool = False,
) -> dict:
    """Write a synthetic dataset in the exact OCT2017 layout under ``out_dir/OCT2017``.

    ``OCT2017/{train,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patientID>-<n>.jpeg``, grayscale JPEG, several
    images per patient, patients disjoint between train and test; image widths vary a little as in the release.

    Args:
        out_dir: destination (created); an existing ``OCT2017`` folder there is refused, never overwritten.
        train_patients: patients per class in ``train/``.
        test_patients: patients per class in ``test/``.
        images_per_patient: B-scans per patient.
        size: base ``(height, width)``; widths vary by up to +25%.
        seed: the same seed writes the same files.
        return_masks: also return where each lesion was planted (the same files are written either way).

    Returns:
        ``{"root": path, "train": n_images, "test": n_images}``, plus with ``return_masks`` ``"lesions"``: the
        file's path below ``root`` (``test/CNV/CNV-<id>-1.jpeg``) -> its bool lesion mask ``(H, W)`` (all False for
        NORMAL), for scoring where a model looked.
    """
    from PIL import Image

    root = Path(out_dir) / "OCT2017"
    if root.exists():
        raise FileExistsError(f"{root} already exists; choose another --out folder (nothing was overwritten).")
    rng = np.random.default_rng(seed)
    n_pat = (train_patients + test_patients) * len(CLASSES)
    pids = rng.choice(np.arange(1_000_000, 9_999_999), size=n_pat, replace=False)
    counts = {"train": 0, "test": 0}
    lesions: dict[str, np.ndarray] = {}
    k = 0
    for split, n in (("train", train_patients), ("test", test_patients)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                pid = int(pids[k])
                k += 1
                for j in range(1, images_per_patient + 1):
                    wid = int(size[1] * rng.uniform(1.0, 1.25))
                    img, mask = synthetic_oct_bscan(cls, (size[0], wid), rng)
                    name = f"{split}/{cls}/{cls}-{pid}-{j}.jpeg"
                    Image.fromarray(img).save(root / name, quality=95)
                    if return_masks:
                        lesions[name] = mask
                    counts[split] += 1
    return {"root": str(root), **counts, **({"lesions": lesions} if return_masks else {})}
