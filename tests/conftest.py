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
