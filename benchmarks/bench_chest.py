"""Chest X-ray input pipeline: the second epoch over 1024x1024 PNGs (the ChestX-ray14 size) with MONAI's cache of
the resized image (CacheDataset in memory, PersistentDataset on disk) vs decoding and resizing every epoch,
through the chest bundle's preprocessing (images/s, higher is better)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from monai.data import CacheDataset, Dataset, PersistentDataset
from PIL import Image

from benchmarks._epoch import epoch_images_per_s
from medplugin.data.synthetic.chest_xray import synthetic_chest_xray
from medplugin.transforms import chest_xray_preprocessing


def _write_pngs(root: Path, n: int, size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    base = synthetic_chest_xray(size=size, rng=0)["image"].astype(np.float32)
    data = []
    for i in range(n):  # the same phantom with fresh noise: real-size, realistically compressible PNGs
        img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        p = root / f"{i:08d}_000.png"
        Image.fromarray(img).save(p)
        data.append({"image": str(p), "label": [0.0] * 14})
    return data


def run(quick: bool = False) -> list[tuple]:
    n, size, out = (6, 256, 64) if quick else (48, 1024, 224)
    transform = chest_xray_preprocessing(out, 1, [0.449], [0.226])
    label = f"chest input pipeline, 2nd epoch, {size}px PNG -> {out}, images/s"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = _write_pngs(Path(tmp), n, size)
        plain = Dataset(data, transform)
        epoch_images_per_s(plain)  # first epoch (warm file cache, as later epochs have)
        uncached = epoch_images_per_s(plain)
        memory = CacheDataset(data, transform, cache_rate=1.0, num_workers=1, progress=False)  # fills the cache
        rows.append((label, "CacheDataset (memory)", epoch_images_per_s(memory), "no cache", uncached))
        disk = PersistentDataset(data, transform, cache_dir=Path(tmp) / "persistent")
        epoch_images_per_s(disk)  # the epoch that writes the cache
        rows.append((label, "PersistentDataset (disk)", epoch_images_per_s(disk), "no cache", uncached))
    return rows
