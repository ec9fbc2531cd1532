"""Reliability of the OCT bundle run the way users run it: crash and resume, same seed same metrics, outputs kept.

Each test starts ``python -m monai.bundle run`` in a subprocess on the tiny synthetic OCT2017 layout.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.bundles._contract import phi_leaks, with_phi
from tests.bundles._runner import (
    EVALUATE,
    REPO,
    SMOKE,
    bundle_dir,
    kill_after_first_checkpoint,
    quiet_env,
    run_bundle,
    tb_scalars,
)

NAME = "retina_oct_classification"
B = bundle_dir(NAME)


def _train_cmd(bundle_root: Path, dataset: Path, *extra: str) -> list[str]:
    files = json.dumps([str(B / "configs" / "train.yaml"), str(SMOKE)])
    return [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(bundle_root), "--config_file", files,
            "--dataset_dir", str(dataset), *extra]


@pytest.mark.slow  # real multi-epoch trainings
def test_killed_training_resumes_from_its_last_checkpoint(oct_demo, tmp_path):
    """SIGKILL mid-run, then ``--resume true``: same run folder, all epochs done once, best metric carried over."""
    root = tmp_path / "bundle"  # a private bundle_root: runs/ and models/ go here
    epochs = 4
    code, first_log = kill_after_first_checkpoint(_train_cmd(root, oct_demo, "--num_epochs", str(epochs)), root)
    assert code == -signal.SIGKILL
    assert f"Epoch[{epochs}] Complete" not in first_log  # really killed before the end
    assert "Engine run resuming from iteration 0" not in first_log  # ignite's note on a fresh start is dropped
    (run,) = list((root / "runs").iterdir())
    (ckpt1,) = list((run / "checkpoints").glob("training_checkpoint_*.pt"))
    tstate = torch.load(ckpt1, weights_only=True)["trainer"]  # ignite keeps iteration and epoch_length
    killed_at = tstate["iteration"] // tstate["epoch_length"]
    assert 1 <= killed_at < epochs

    resumed = subprocess.run(_train_cmd(root, oct_demo, "--num_epochs", str(epochs), "--resume", "true"), cwd=REPO,
                             env=quiet_env(), capture_output=True, text=True, timeout=600)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-6000:]
    assert [p.name for p in (root / "runs").iterdir()] == [run.name]  # wrote into the same run folder
    assert f"resumed from {run / 'checkpoints'}" in log and f"at epoch {killed_at}" in log
    # the resume is said once, by the line above (ignite's note comes before the checkpoint is loaded and would say
    # "iteration 0": dropped)
    assert "Engine run resuming from iteration" not in log
    trained = [e for e in range(1, epochs + 1) if f"SupervisedTrainer - INFO - Epoch[{e}] Complete" in log]
    assert trained == list(range(killed_at + 1, epochs + 1))  # completed epochs are not trained again

    (last,) = list((run / "checkpoints").glob("training_checkpoint_*.pt"))  # older ones pruned
    state = torch.load(last, weights_only=True)
    assert state["trainer"]["iteration"] == epochs * state["trainer"]["epoch_length"]
    assert last.name == f"training_checkpoint_{state['trainer']['iteration']}.pt"
    assert state["lr_scheduler"]["last_epoch"] == epochs  # the cosine schedule went on, not restarted
    assert state["optimizer"]["state"]  # Adam moments saved

    scalars = tb_scalars(run / "tensorboard")
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # both processes logged here
    val = scalars["val_accuracy"]
    assert sorted({s for s, _ in val}) == list(range(1, epochs + 1))
    assert max(s for s, _ in scalars["train_loss"]) == state["trainer"]["iteration"]  # steps continue
    best = max(v for _, v in val)
    assert state["validator_BestModelSaver"]["best"] == pytest.approx(best)
    assert state["validator_best"]["best_metric"] == pytest.approx(best)
    meta = json.loads((root / "models" / "model.json").read_text())
    assert meta["val_accuracy"] == pytest.approx(best)
    assert not list((root / "models").glob("model.*.pt"))  # the resumed run did not set its own model.pt aside
    weights = torch.load(root / "models" / "model.pt", weights_only=True)
    assert weights["fc.weight"].shape == (4, 2048)


def test_resume_without_an_earlier_run_says_so(oct_demo, tmp_path):
    proc = subprocess.run(_train_cmd(tmp_path, oct_demo, "--resume", "true"), cwd=REPO, env=quiet_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no earlier 'train_*' run with a checkpoint here" in proc.stdout + proc.stderr


# ---- same seed, same data, same metrics ------------------------------------------------------------------------

@pytest.mark.slow  # real multi-epoch trainings
def test_same_seed_same_data_gives_identical_metrics_on_cpu(oct_demo, tmp_path):
    runs = []
    for k in ("a", "b"):
        run_bundle(NAME, "train.yaml", SMOKE, dataset_dir=oct_demo, ckpt_dir=tmp_path / k / "models",
                   output_dir=tmp_path / k / "train", num_epochs=2)
        runs.append(tmp_path / k)
    # every logged loss, learning rate and validation metric at every step; not the timings (perf/...)
    a, b = (
        {
            t: [(s, "nan" if v != v else v) for s, v in vals]
            for t, vals in tb_scalars(r / "train" / "tensorboard").items()
            if not t.startswith("perf/")
        }
        for r in runs
    )
    assert {"train_loss", "val_accuracy", "val_macro_auc"} <= set(a)
    assert a == b
    meta = [json.loads((r / "models" / "model.json").read_text()) for r in runs]
    assert meta[0]["val_accuracy"] == meta[1]["val_accuracy"]
    wa, wb = (torch.load(r / "models" / "model.pt", weights_only=True) for r in runs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- no run writes into its input or over an earlier run ---------------------------------------------------------

def test_runs_refuse_the_input_folder_and_an_earlier_runs_folder(oct_demo, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in oct_demo.rglob("*")}
    with pytest.raises(AssertionError, match=r"is inside the input folder .*choose another --output_dir"):
        run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=oct_demo / "test", ckpt_dir=tmp_path / "models",
                   output_dir=oct_demo / "test" / "results")
    with pytest.raises(AssertionError, match=r"is inside the input folder"):
        run_bundle(NAME, "train.yaml", SMOKE, dataset_dir=oct_demo, ckpt_dir=tmp_path / "models",
                   output_dir=oct_demo / "runs")
    assert {p: p.stat().st_mtime_ns for p in oct_demo.rglob("*")} == before  # nothing added or touched
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text('{"accuracy": 0.97}')
    with pytest.raises(AssertionError, match=r"already holds the outputs of an earlier run \(metrics.json\)"):
        run_bundle(NAME, EVALUATE, SMOKE, dataset_dir=oct_demo, ckpt_dir=tmp_path / "models",
                   output_dir=earlier)
    assert (earlier / "metrics.json").read_text() == '{"accuracy": 0.97}'


# ---- patient data stays out of what a run writes; input names cannot escape the output folder ------------------


@pytest.fixture(scope="module")
def phi_dicoms(tmp_path_factory):
    """16 real DICOM images (pydicom's CT and MR test files) whose patient tags carry distinctive values, with a
    datalist (training / validation / test) naming them by neutral file names."""
    from pydicom.data import get_testdata_file

    root = tmp_path_factory.mktemp("phi")
    sources = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
    entries = []
    for i in range(16):
        path = with_phi(sources[i % 2], root / "dicom" / f"img_{i:02d}.dcm")
        entries.append({"image": str(path), "label": (i // 2) % 4, "patient_id": f"p{i}"})
    dl = {"training": entries[:8], "validation": entries[8:12], "test": entries[12:]}
    (root / "datalist.json").write_text(json.dumps(dl))
    return root


@pytest.fixture(scope="module")
def phi_runs(phi_dicoms, tmp_path_factory):
    """Train, evaluate and infer over the DICOMs: (their output folder, the runs' stdout+stderr)."""
    out = tmp_path_factory.mktemp("phi_out")
    dl, ckpt = phi_dicoms / "datalist.json", out / "models"
    logs = [run_bundle(NAME, "train.yaml", SMOKE, datalist=dl, ckpt_dir=ckpt, output_dir=out / "train"),
            run_bundle(NAME, EVALUATE, SMOKE, datalist=dl, ckpt_dir=ckpt, output_dir=out / "evaluate"),
            run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=phi_dicoms / "dicom", ckpt_dir=ckpt,
                       output_dir=out / "inference")]
    return out, "\n".join(p.stdout + p.stderr for p in logs)


def test_patient_data_stays_out_of_logs_tensorboard_and_outputs(phi_runs):
    out, log = phi_runs
    ckpt = out / "models"
    # the runs did read these files: a model, events, metrics over the 4 test images, a prediction per file
    assert (ckpt / "model.pt").is_file() and (ckpt / "model.json").is_file()
    assert list((out / "train" / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "evaluate" / "metrics.json").read_text())["n"] == 4
    rows = list(csv.DictReader((out / "inference" / "predictions.csv").open()))
    assert len(rows) == 16 and all(r["prediction"] and not r["error"] for r in rows)
    assert phi_leaks(out, log) == []


def test_input_names_cannot_write_outside_the_output_folder(phi_runs, oct_demo, tmp_path):
    """Names with '..', absolute paths, separators and control characters only ever give file names inside it."""
    import shutil

    src = tmp_path / "in" / "deep"
    src.mkdir(parents=True)
    jpeg = sorted((oct_demo / "test" / "CNV").glob("*.jpeg"))[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    names = ["ok.jpeg", "evil\x1b[31m\x07name\t.jpeg", "..evil.jpeg", "back\\slash\\..\\x.jpeg"]
    for n in names:
        shutil.copy(jpeg, src / n)
    shutil.copy(jpeg, outside / "up.jpeg")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([*names, "../../outside/up.jpeg", str(outside / "up.jpeg")]) + "\n")
    ckpt = phi_runs[0] / "models"  # the model trained on the DICOMs: same input size, one channel
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "results"
    run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, datalist=listing, ckpt_dir=ckpt, output_dir=out)
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == out or out in p.parents for p in new), sorted(new)
    overlays = sorted(p.name for p in (out / "cams").iterdir())
    assert len(overlays) == 6  # one per input, none overwritten by another
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 6 and all(r["error"] == "" for r in rows)
    for name in overlays:
        assert name.isprintable() and "/" not in name and "\\" not in name and ".." not in name
        assert not name.startswith(".")
