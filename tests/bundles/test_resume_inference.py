"""Archive inference: a run killed with SIGKILL and resumed, or spread over two processes, gives exactly the results of
one uninterrupted run."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch

from medplugin.networks import classifier
from tests.bundles._runner import SMOKE, kill_inference_after_rows, run_bundle, torchrun_bundle

NAME = "retina_oct_classification"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _inputs(tmp_path, n: int):
    """``n`` OCT2017-sized scans (each CAM overlay takes a noticeable moment to write) and a truncated one, and an
    untrained model."""
    from PIL import Image

    src, ckpt = tmp_path / "in", tmp_path / "models"
    src.mkdir(), ckpt.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((496, 512)) * 255).astype(np.uint8)).save(src / f"scan_{i:02d}.jpg")
    (src / "scan_05_broken.jpg").write_bytes((src / "scan_05.jpg").read_bytes()[:300])
    torch.manual_seed(0)
    torch.save(classifier("resnet50", in_channels=1, num_classes=4).state_dict(), ckpt / "model.pt")
    return src, ckpt


def test_inference_killed_and_resumed_gives_one_row_per_input_equal_to_an_uninterrupted_run(tmp_path):
    src, ckpt = _inputs(tmp_path, 24)
    common = {"dataset_dir": src, "ckpt_dir": ckpt, "batch_size": 1}

    killed = tmp_path / "killed"
    kill_inference_after_rows(NAME, killed / "predictions.csv", 4, SMOKE, output_dir=killed, **common)
    partial = _rows(killed / "predictions.csv")
    assert 4 <= len(partial) - 1 < 25

    run_bundle(NAME, "inference.yaml", SMOKE, output_dir=killed, resume="true", **common)
    whole = tmp_path / "whole"
    run_bundle(NAME, "inference.yaml", SMOKE, output_dir=whole, **common)

    resumed, fresh = _rows(killed / "predictions.csv"), _rows(whole / "predictions.csv")
    files = sorted(str(p) for p in src.iterdir())
    assert [r[0] for r in resumed[1:]] == files  # every input exactly once, in input order
    assert resumed == fresh  # same columns, predictions, probabilities and the bad file's error row
    bad = [r for r in resumed if r[0].endswith("scan_05_broken.jpg")][0]
    assert bad[1] == "" and "scan_05_broken.jpg" in bad[-1]
    assert sorted(os.listdir(killed / "cams")) == sorted(os.listdir(whole / "cams"))  # one overlay per good scan
    assert len(os.listdir(whole / "cams")) == 24

    again = run_bundle(NAME, "inference.yaml", SMOKE, output_dir=killed, resume="true", **common)  # nothing left
    assert _rows(killed / "predictions.csv") == fresh
    assert "25 of 25 input(s) already done, 0 to go" in again.stdout + again.stderr


def test_two_processes_infer_each_file_once_and_join_one_csv_in_input_order(tmp_path):
    """multi_gpu_inference.yaml under torchrun (gloo): 8 files over 2 ranks give the one-process run's rows, in input
    order, and its CAM overlays (each written by the rank that computed it); no part file is left behind."""
    src, ckpt = _inputs(tmp_path, 7)
    one, two = tmp_path / "one", tmp_path / "two"
    run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=ckpt, output_dir=one)
    torchrun_bundle(NAME, ("inference.yaml", "multi_gpu_inference.yaml"), SMOKE, dataset_dir=src, ckpt_dir=ckpt,
                    output_dir=two)
    r1, r2 = _rows(one / "predictions.csv"), _rows(two / "predictions.csv")
    assert [r[0] for r in r2[1:]] == sorted(str(p) for p in src.iterdir())
    assert r2[0] == r1[0] and [r[:2] + r[-1:] for r in r2] == [r[:2] + r[-1:] for r in r1]
    probs = [i for i, c in enumerate(r1[0]) if c.startswith("prob_")]
    assert len(probs) == 4
    for a, b in zip(r1[1:], r2[1:]):  # probabilities: other batch compositions, same values
        assert [float(a[i] or 0) for i in probs] == pytest.approx([float(b[i] or 0) for i in probs], abs=2e-6)
        assert a[len(probs) + 2:] == b[len(probs) + 2:]  # calls, the gate's columns and errors
    assert sorted(os.listdir(two)) == ["cams", "predictions.csv", "run.log"]
    assert sorted(os.listdir(two / "cams")) == sorted(os.listdir(one / "cams")) and len(os.listdir(one / "cams")) == 7
