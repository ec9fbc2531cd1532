"""configs/fast.yaml on the OCT bundle through the MONAI bundle runner: same results, images decoded once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.bundles._runner import REPO, SMOKE, run_bundle

NAME = "retina_oct_classification"
FAST = REPO / "configs" / "fast.yaml"


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [e.value for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_fast_overlay_gives_the_same_model_and_metrics_on_cpu(oct_demo, tmp_path):
    """On the CPU the overlay only turns the uint8 decode cache on: two epochs give bit-identical results."""
    runs = {}
    for name, overlays in (("plain", (SMOKE,)), ("fast", (SMOKE, FAST))):
        run_bundle(NAME, "train.yaml", *overlays, dataset_dir=oct_demo, ckpt_dir=tmp_path / name / "models",
                   output_dir=tmp_path / name / "train", num_epochs=2)
        runs[name] = (torch.load(tmp_path / name / "models" / "model.pt", weights_only=True),
                      _scalars(tmp_path / name / "train"))
    (w_plain, s_plain), (w_fast, s_fast) = runs["plain"], runs["fast"]
    assert w_plain.keys() == w_fast.keys()
    assert all(torch.equal(w_plain[k], w_fast[k]) for k in w_plain)
    assert len(s_plain["train_loss"]) >= 2 and s_plain["train_loss"] == s_fast["train_loss"]  # every iteration
    for tag in ("val_accuracy", "val_macro_auc"):
        assert len(s_plain[tag]) == 2 and s_plain[tag] == s_fast[tag], tag
    assert len(s_fast["perf/images_per_s"]) == 2 and all(v > 0 for v in s_fast["perf/images_per_s"])


@pytest.mark.slow
def test_disk_cache_replaces_decoding_and_device_augmentation_runs(oct_demo, tmp_path):
    """cache: disk writes one uint8 file per training/validation image; a second run trains from them even when
    the training images on disk are now unreadable (an uncached run fails on them). The device-side path
    (gpu_augmentation, channels_last) runs on the CPU too."""
    data = tmp_path / "OCT2017"
    shutil.copytree(oct_demo, data)
    cache = tmp_path / "cache"
    opts = dict(dataset_dir=data, cache="disk", cache_dir=cache, gpu_augmentation=True, channels_last=True)
    run_bundle(NAME, "train.yaml", SMOKE, FAST, ckpt_dir=tmp_path / "m1", output_dir=tmp_path / "r1", **opts)
    dl = json.loads((tmp_path / "r1" / "datalist.json").read_text())
    files = sorted(cache.glob("*.pt"))
    assert len(files) == len(dl["training"]) + len(dl["validation"])
    item = torch.load(files[0], weights_only=True)
    assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (1, 32, 32)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in _scalars(tmp_path / "r1")["train_loss"])

    for e in dl["training"]:  # truncate every training image (the JPEG header stays, so indexing accepts it)
        p = Path(e["image"])
        p.write_bytes(p.read_bytes()[:300])
    run_bundle(NAME, "train.yaml", SMOKE, FAST, ckpt_dir=tmp_path / "m2", output_dir=tmp_path / "r2", **opts)
    assert (tmp_path / "m2" / "model.pt").is_file()
    assert sorted(cache.glob("*.pt")) == files  # nothing decoded again
    with pytest.raises(AssertionError, match="truncated"):
        run_bundle(NAME, "train.yaml", SMOKE, ckpt_dir=tmp_path / "m3", output_dir=tmp_path / "r3", dataset_dir=data)
