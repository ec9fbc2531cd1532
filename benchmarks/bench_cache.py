"""Decode once: the second epoch of the input pipeline with the uint8 cache (memory, disk) vs decoding every
epoch, on 1024x1024 PNGs resized to 224 for the OCT bundle's preprocessing + augmentation (images/s)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from monai.transforms import Compose
from PIL import Image

from benchmarks._epoch import epoch_images_per_s
from medplugin.data.cache import build_dataset
from medplugin.transforms import image_classification_augmentation, image_classification_preprocessing


def _write_pngs(root: Path, n: int, size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    data = []
    for i in range(n):  # smooth bands plus speckle, roughly like an OCT B-scan
        img = 90 + 60 * np.sin(yy / (17 + i) + xx / 301) + rng.normal(0, 20, (size, size))
        p = root / f"img{i:04d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p)
        data.append({"image": str(p), "label": i % 4})
    return data


def run(quick: bool = False) -> list[tuple]:
    n, size, out = (8, 512, 112) if quick else (48, 1024, 224)
    transform = Compose(
        [image_classification_preprocessing(out, 1, [0.5], [0.25]), image_classification_augmentation()]
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = _write_pngs(Path(tmp), n, size)
        plain = build_dataset("none", data, transform)
        epoch_images_per_s(plain)  # first epoch (warm file cache, as later epochs have)
        uncached = epoch_images_per_s(plain)
        for kind in ("memory", "disk"):
            ds = build_dataset(kind, data, transform, cache_dir=Path(tmp) / "cache", num_workers=1)
            epoch_images_per_s(ds)  # the epoch that fills the cache
            rows.append((f"input pipeline, 2nd epoch, {size}px PNG -> {out}, images/s", f"{kind} cache",
                         epoch_images_per_s(ds), "decode every epoch", uncached))
    return rows
