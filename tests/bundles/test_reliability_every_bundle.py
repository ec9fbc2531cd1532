"""Crash-and-resume and same-seed reproducibility for every training bundle besides OCT (its own, more detailed
tests are in test_oct_reliability.py), each run the way users run it: ``python -m monai.bundle run`` in a
subprocess on a tiny synthetic dataset in the bundle's real layout.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.bundles._runner import REPO, SMOKE, bundle_dir, kill_after_first_checkpoint, quiet_env, tb_scalars


@dataclass(frozen=True)
class Spec:
    data: str  # the fixture (tests/bundles/conftest.py) of the bundle's tiny dataset
    key_metric: str  # the validation metric the best model is chosen by
    overrides: dict = field(default_factory=dict)


SPECS = {
    "chest_xray_classification": Spec("cxr_demo", "val_mean_auroc", {"val_fraction": 0.3}),
    "lung_xray_segmentation": Spec("lung_demo", "val_mean_dice"),
    "retina_fundus_classification": Spec("fundus_demo", "val_auc"),
    "knee_mri_classification": Spec("knee_nifti", "val_auc", {"num_slices": 8}),
    "knee_mri_segmentation": Spec("knee_seg_demo", "val_mean_dice", {"patch_slices": 16}),
}


def _train_cmd(name: str, bundle_root: Path, dataset: Path, **overrides) -> list[str]:
    files = json.dumps([str(bundle_dir(name) / "configs" / "train.yaml"), str(SMOKE)])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(bundle_root), "--config_file", files,
           "--dataset_dir", str(dataset)]
    for k, v in {**SPECS[name].overrides, **overrides}.items():
        cmd += [f"--{k}", str(v)]
    return cmd


@pytest.fixture(scope="module", params=sorted(SPECS))
def bundle_data(request) -> tuple[str, Path]:
    name = request.param
    return name, request.getfixturevalue(SPECS[name].data)


@pytest.mark.slow  # real multi-epoch trainings
def test_killed_training_resumes_from_its_last_checkpoint(bundle_data, tmp_path):
    """SIGKILL after the first epoch's checkpoint, then ``--resume true``: same run folder, no epoch trained twice,
    the schedule and the best metric carried over, the best model kept by the key metric over all epochs."""
    name, data = bundle_data
    root, epochs = tmp_path / "bundle", 5
    code, first_log = kill_after_first_checkpoint(_train_cmd(name, root, data, num_epochs=epochs), root)
    assert code == -signal.SIGKILL
    assert f"Epoch[{epochs}] Complete" not in first_log
    (run,) = list((root / "runs").iterdir())
    (ckpt1,) = list((run / "checkpoints").glob("training_checkpoint_*.pt"))
    tstate = torch.load(ckpt1, weights_only=True)["trainer"]
    killed_at = tstate["iteration"] // tstate["epoch_length"]
    assert 1 <= killed_at < epochs

    resumed = subprocess.run(_train_cmd(name, root, data, num_epochs=epochs, resume="true"), cwd=REPO,
                             env=quiet_env(), capture_output=True, text=True, timeout=600)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-6000:]
    assert [p.name for p in (root / "runs").iterdir()] == [run.name]
    assert f"resumed from {run / 'checkpoints'}" in log and f"at epoch {killed_at}" in log
    trained = [e for e in range(1, epochs + 1) if f"SupervisedTrainer - INFO - Epoch[{e}] Complete" in log]
    assert trained == list(range(killed_at + 1, epochs + 1))

    (last,) = list((run / "checkpoints").glob("training_checkpoint_*.pt"))
    state = torch.load(last, weights_only=True)
    assert state["trainer"]["iteration"] == epochs * state["trainer"]["epoch_length"]
    if "lr_scheduler" in state:
        assert state["lr_scheduler"]["last_epoch"] == epochs
    assert state["optimizer"]["state"]

    scalars = tb_scalars(run / "tensorboard")
    key = SPECS[name].key_metric
    val = scalars[key]
    assert sorted({s for s, _ in val}) == list(range(1, epochs + 1))  # every epoch validated once, across both
    assert max(s for s, _ in scalars["train_loss"]) == state["trainer"]["iteration"]
    defined = [v for _, v in val if not math.isnan(v)]
    assert defined, f"{key} undefined at every epoch"
    assert state["validator_BestModelSaver"]["best"] == pytest.approx(max(defined))
    meta = json.loads((root / "models" / "model.json").read_text())
    assert meta[key] == pytest.approx(max(defined))
    assert not list((root / "models").glob("model.*.pt"))  # the resumed run did not set its own model.pt aside


@pytest.mark.slow  # real trainings
def test_same_seed_same_data_gives_identical_metrics_on_cpu(bundle_data, tmp_path):
    """Two runs, same seed and data, on the CPU: every logged loss, learning rate and metric, and the weights."""
    name, data = bundle_data
    runs = []
    for k in ("a", "b"):
        cmd = _train_cmd(name, tmp_path / k, data, num_epochs=2, ckpt_dir=tmp_path / k / "models",
                         output_dir=tmp_path / k / "train")
        proc = subprocess.run(cmd, cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        runs.append(tmp_path / k)
    a, b = ({t: [(s, "nan" if v != v else v) for s, v in vals]
             for t, vals in tb_scalars(r / "train" / "tensorboard").items() if not t.startswith("perf/")} for r in runs)
    assert {"train_loss", SPECS[name].key_metric} <= set(a)
    assert a == b
    wa, wb = (torch.load(r / "models" / "model.pt", weights_only=True) for r in runs)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])][:5]
