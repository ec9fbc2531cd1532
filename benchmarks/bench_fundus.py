"""Fundus preprocessing: cost of the lesion candidates per 512x512 image, and what caching it saves.

Rows:
- ms per image of the fundus preprocessing (load JPEG, FOV crop to 512, Graham contrast, radial-symmetry /
  Tsallis lesion candidates, drawing) in ``annotated`` mode vs ``original`` mode (load + FOV crop only):
  the price of the lesion-candidate step as a ratio.
- images per second of a training data epoch (preprocessing + augmentation, no network) from a MONAI
  ``CacheDataset`` (second epoch: the deterministic preprocessing comes from memory) vs a plain ``Dataset``
  (recomputed every epoch), both in ``annotated`` mode.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from monai.data import CacheDataset, Dataset
from monai.transforms import Compose

from medplugin.data.synthetic.fundus import make_eyepacs_demo
from medplugin.transforms import fundus_augmentation, fundus_classification_preprocessing


def _per_image_ms(files: list[str], mode: str, size: int, repeats: int) -> float:
    pre = fundus_classification_preprocessing(size, mode)
    pre({"image": files[0]})  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        for f in files:
            pre({"image": f})
    return 1000.0 * (time.perf_counter() - t0) / (repeats * len(files))


def _epoch_ips(ds) -> float:
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return len(ds) / (time.perf_counter() - t0)


def run(quick: bool = False) -> list[tuple]:
    n, size, photo = (4, 128, 160) if quick else (12, 512, 640)
    with tempfile.TemporaryDirectory() as tmp:
        make_eyepacs_demo(tmp, n_patients=max(1, n // 2), size=photo, seed=0, n_test_patients=0)
        files = sorted(str(p) for p in Path(tmp, "train").glob("*.jpeg"))
        annotated = _per_image_ms(files, "annotated", size, 1 if quick else 2)
        original = _per_image_ms(files, "original", size, 1 if quick else 2)
        data = [{"image": f} for f in files]
        train_tf = Compose(
            [fundus_classification_preprocessing(size, "annotated"), fundus_augmentation(size)]
        ).flatten()
        cached = CacheDataset(data, train_tf, cache_rate=1.0, num_workers=0, progress=False)  # epoch 1 fills it
        cached_ips = _epoch_ips(cached)  # epoch 2
        plain_ips = _epoch_ips(Dataset(data, train_tf))
    return [
        (f"fundus preprocessing {size}px, ms/image", "annotated (lesion candidates)", annotated, "original (FOV crop)",
         original),
        (f"fundus training data epoch {size}px annotated, images/s", "CacheDataset epoch 2", cached_ips,
         "Dataset (uncached)", plain_ips),
    ]
