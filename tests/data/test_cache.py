"""Decode once: build_dataset caches decoded, resized uint8 images and never decodes them again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

from medplugin.data.cache import build_dataset, cached_steps
from medplugin.transforms import (
    CacheBoundary,
    ToUint8d,
    image_classification_augmentation,
    image_classification_preprocessing,
)


@pytest.fixture
def pngs(tmp_path):
    rng = np.random.default_rng(0)
    data = []
    for i in range(4):
        p = tmp_path / "img" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (60, 72), dtype=np.uint8)).save(p)
        data.append({"image": str(p), "label": i % 2})
    return data


def _pre(size=32):
    return image_classification_preprocessing(size, 1, mean=[0.5], std=[0.25])


def _epoch(ds):
    return [ds[i]["image"].clone() for i in range(len(ds))]


def test_cache_stops_at_the_uint8_boundary_of_the_preprocessing():
    steps = cached_steps(Compose([_pre(), image_classification_augmentation()]))  # nested Compose is flattened
    assert [type(s).__name__ for s in steps] == ["LoadImage2dd", "Resized", "ToUint8d"]
    assert cached_steps(Compose([ToUint8d(["image"]), image_classification_augmentation()]))[-1].__class__ is ToUint8d
    assert cached_steps(Compose([CacheBoundary(), _pre()])) == []


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_cached_items_equal_uncached_and_sources_are_not_read_again(kind, pngs, tmp_path):
    plain = _epoch(build_dataset("none", pngs, _pre()))
    ds = build_dataset(kind, pngs, _pre(), cache_dir=tmp_path / "cache", num_workers=2)
    first = _epoch(ds)
    for p in pngs:  # a cached dataset must not need its source files any more
        Image.new("L", (5, 5)).save(p["image"])
    second = _epoch(ds)
    for a, b, c in zip(plain, first, second):
        assert a.dtype == torch.float32 and torch.equal(a, b) and torch.equal(b, c)
    fresh = _epoch(build_dataset("none", pngs, _pre()))  # sanity: the sources did change
    assert fresh[0].std() == 0 < plain[0].std()
    if kind == "disk":
        files = sorted((tmp_path / "cache").glob("*.pt"))
        assert len(files) == len(pngs)
        item = torch.load(files[0], weights_only=True)
        assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (1, 32, 32)


def test_random_augmentation_still_runs_after_the_cache(pngs):
    ds = build_dataset("memory", pngs, Compose([_pre(), image_classification_augmentation(prob=1.0)]), num_workers=1)
    ds.transform.set_random_state(0)
    a, b = _epoch(ds), _epoch(ds)
    assert all(not torch.equal(x, y) for x, y in zip(a, b))


def test_disk_cache_names_depend_on_the_cached_settings(pngs, tmp_path):
    for size in (32, 32, 40):
        _epoch(build_dataset("disk", pngs, _pre(size), cache_dir=tmp_path / "c"))
    assert len(list((tmp_path / "c").glob("*.pt"))) == 2 * len(pngs)  # 32 reused, 40 new


def test_uint8_rounding_moves_values_by_at_most_half_a_grey_level(pngs):
    a = _epoch(build_dataset("none", pngs, _pre()))
    b = _epoch(build_dataset("none", pngs, image_classification_preprocessing(32, 1, [0.5], [0.25], uint8=False)))
    for x, y in zip(a, b):
        assert (x - y).abs().max() <= 0.5 / 255 / 0.25 + 1e-5


def test_bad_settings_are_named(pngs):
    with pytest.raises(ValueError, match="cache must be one of none, memory, disk, got 'ram'"):
        build_dataset("ram", pngs, _pre())
    with pytest.raises(ValueError, match="needs a cache_dir"):
        build_dataset("disk", pngs, _pre())
