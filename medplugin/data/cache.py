"""Decode once: datasets that keep each item's deterministic preprocessing (decoded, resized, ``uint8``).

``build_dataset(kind, data, transform, cache_dir)`` is what bundle configs call for their training and
validation datasets, with ``kind`` from the top-level ``cache`` hyperparameter:

- ``none``: MONAI ``Dataset``; every access runs the whole transform.
- ``memory``: MONAI ``CacheDataset``; the leading deterministic steps run once per item, up front, in threads,
  and their results stay in RAM.
- ``disk``: MONAI ``PersistentDataset``; the same results are written once to ``cache_dir`` as ``.pt`` files
  and read back in later epochs and later runs. File names hash the item and the cached steps' settings, so a
  run with another ``image_size`` does not read stale images.

Caching stops at the first random transform, or at :class:`medplugin.transforms.CacheBoundary` (MONAI stops at
any step that is not a ``Transform``). Nested ``Compose`` objects are flattened first: MONAI treats a nested
``Compose`` as random and would otherwise cache nothing. With the preprocessing of
:func:`medplugin.transforms.image_classification_preprocessing` the cached item holds a ``uint8`` image, and
all three kinds give the same numbers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Compose, RandomizableTrait, Transform

__all__ = ["CACHE_KINDS", "build_dataset", "cached_steps"]

logger = logging.getLogger(__name__)

CACHE_KINDS = ("none", "memory", "disk")


def _flat(transform: Callable | Sequence[Callable] | None) -> Compose:
    if transform is None:
        return Compose([])
    if not isinstance(transform, Compose):
        transform = Compose(list(transform) if isinstance(transform, (list, tuple)) else [transform])
    return transform.flatten()


def cached_steps(transform: Callable | Sequence[Callable] | None) -> list:
    """The steps of ``transform`` (flattened) whose results a cache keeps: those before the first random step or
    the first step that is not a MONAI ``Transform`` (e.g. :class:`medplugin.transforms.CacheBoundary`)."""
    steps = []
    for t in _flat(transform).transforms:
        if isinstance(t, RandomizableTrait) or not isinstance(t, Transform):
            break
        steps.append(t)
    return steps


def build_dataset(kind: str, data: Sequence[dict], transform: Callable | Sequence[Callable] | None,
                  cache_dir: str | os.PathLike | None = None, num_workers: int | None = None,
                  progress: bool = False) -> Dataset:
    """A MONAI dataset over ``data`` that decodes each item once (``memory``, ``disk``) or every time (``none``).

    Args:
        kind: ``"none"``, ``"memory"`` or ``"disk"`` (see the module docstring).
        data: datalist entries (dicts).
        transform: the item pipeline, e.g. ``Compose([preprocessing, augmentation])``; nested ``Compose``
            objects are flattened so the cache reaches into them.
        cache_dir: folder of the ``disk`` cache (created if missing); required for ``disk``, unused otherwise.
        num_workers: threads that fill the ``memory`` cache (default: the CPU count).
        progress: show a progress bar while the ``memory`` cache fills.

    Returns:
        ``Dataset``, ``CacheDataset`` or ``PersistentDataset``.
    """
    kind = str(kind).lower()
    if kind not in CACHE_KINDS:
        raise ValueError(f"cache must be one of {', '.join(CACHE_KINDS)}, got {kind!r}.")
    flat = _flat(transform)
    if kind == "none":
        return Dataset(data=data, transform=flat)
    if not cached_steps(flat):
        logger.warning("cache=%s: the transform starts with a random step, nothing will be cached", kind)
    if kind == "memory":
        workers = int(num_workers) if num_workers else (os.cpu_count() or 1)
        return CacheDataset(data=data, transform=flat, cache_rate=1.0, num_workers=max(1, workers),
                            progress=progress, copy_cache=True)
    if cache_dir is None:
        raise ValueError("cache='disk' needs a cache_dir, got None.")
    path = Path(cache_dir)
    path.mkdir(parents=True, exist_ok=True)
    return PersistentDataset(data=data, transform=flat, cache_dir=path, hash_transform=pickle_hashing)
