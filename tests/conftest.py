"""Shared fixtures: tiny synthetic datasets laid out like the real releases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# keep test runs predictable on 2-core machines
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def oct_demo(tmp_path_factory) -> Path:
    """A tiny OCT2017-layout dataset: 3 patients per class in train, 1 in test, 2 images each, 64x80."""
    from medplugin.data.synthetic.oct import make_oct2017_demo

    out = tmp_path_factory.mktemp("oct_demo")
    info = make_oct2017_demo(out, train_patients=3, test_patients=1, images_per_patient=2, size=(64, 80), seed=1)
    return Path(info["root"])


@pytest.fixture(scope="session")
def oct_smoke_run(oct_demo, tmp_path_factory) -> tuple[Path, Path]:
    """One smoke training run of the OCT bundle shared by the integration tests: (ckpt_dir, output_dir)."""
    from tests.bundles._runner import SMOKE, run_bundle

    tmp = tmp_path_factory.mktemp("oct_smoke_run")
    run_bundle("retina_oct_classification", "train.yaml", SMOKE, dataset_dir=oct_demo, ckpt_dir=tmp / "models",
               output_dir=tmp / "train")
    return tmp / "models", tmp / "train"
