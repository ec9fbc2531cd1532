"""medplugin.utils: outputs get the permissions of any file the user creates; the run-folder check lets a failed
run's log be; the loader helpers every bundle's training uses."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from medplugin.errors import BadInputError
from medplugin.utils import atomic_write, check_output_dir, default_workers, drop_last_batch_of_one, write_json


@pytest.fixture
def umask():
    """Set the process umask for one test, and restore it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    json_file = write_json(tmp_path / "metrics.json", {"a": 1})
    pt = atomic_write(tmp_path / "model.pt", lambda tmp: torch.save({"w": torch.zeros(1)}, tmp))
    with open(tmp_path / "plain.txt", "w") as f:  # what any file the user creates gets
        f.write("x")
    for path in (json_file, pt, tmp_path / "plain.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_failed_runs_log_does_not_make_its_folder_an_earlier_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.log").write_text("the traceback of a failed run\n")
    assert check_output_dir(out, [tmp_path / "data"]) == str(out)
    (out / "metrics.json").write_text("{}")
    with pytest.raises(BadInputError, match=r"already holds the outputs of an earlier run \(metrics\.json\)"):
        check_output_dir(out, [tmp_path / "data"])


def test_drop_last_only_when_the_last_batch_would_hold_one_sample():
    # the chest demo under smoke.yaml: 349 training images at batch 4 leave one
    assert drop_last_batch_of_one(range(349), 4) is True
    assert drop_last_batch_of_one(range(350), 4) is False  # a last batch of 2 is kept
    assert drop_last_batch_of_one(range(348), 4) is False
    assert drop_last_batch_of_one(range(1), 4) is False  # smaller than a batch: left alone (no empty epoch)


def test_default_workers_never_exceed_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert default_workers(4) == min(4, cores)
    assert default_workers(0) == 0
    assert default_workers(10_000) == cores


def test_each_process_takes_the_gpu_of_its_local_rank_on_every_node(monkeypatch):
    """torchrun on two 8-GPU nodes: global rank 9 is LOCAL_RANK 1 of the second node and must use cuda:1 (there is
    no cuda:9 there); without CUDA every rank uses the CPU. Every multi_gpu_*.yaml takes its device from here."""
    from pathlib import Path

    from medplugin.utils import process_device

    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert process_device() == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device() == torch.device("cpu")
    overlays = sorted((Path(__file__).resolve().parent.parent / "bundles").glob("*/configs/multi_gpu_*.yaml"))
    assert len(overlays) == 18  # train, evaluate and inference overlays of six bundles
    for f in overlays:
        assert 'device: "$medplugin.utils.process_device()"' in f.read_text(), f
