"""The first hour of a new user (issue 17), through the real runner: a misspelled override stops the run before any
work; a failure on bad input ends with one line naming the file and what to do (the traceback in the run's log);
MONAI's export command refuses a model trained with other settings with the overrides that fix it; the commands the
demo prints at its end run as printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from medplugin.cli import next_steps
from tests.bundles._runner import REPO, SMOKE, bundle_dir, config_files, quiet_env

OCT = "retina_oct_classification"


def _bundle(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` as a user types it (no check of the exit status)."""
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, env=quiet_env(), text=True,
                          capture_output=True, timeout=timeout)


def _train_args(**overrides) -> list[str]:
    args = ["run", "--bundle_root", str(bundle_dir(OCT)), "--config_file",
            json.dumps(config_files(OCT, "train.yaml", SMOKE))]
    for k, v in overrides.items():
        args += [f"--{k}", str(v)]
    return args


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_a_misspelled_override_stops_the_run_before_any_work(oct_demo, tmp_path):
    out = tmp_path / "train"
    proc = _bundle(*_train_args(dataset_dir=oct_demo, ckpt_dir=tmp_path / "models", output_dir=out, num_epoch=3))
    assert proc.returncode != 0
    assert _last_line(proc) == (f"error: unknown key 'num_epoch'; did you mean 'num_epochs'? (the settings are at the "
                                f"top of {bundle_dir(OCT) / 'configs' / 'train.yaml'}; check the spelling, or drop "
                                "the option)")
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "models").exists()  # nothing was done


def test_a_missing_dataset_folder_ends_in_one_line_with_the_traceback_in_the_runs_log(tmp_path):
    missing, out = tmp_path / "OCT2017", tmp_path / "train"
    proc = _bundle(*_train_args(dataset_dir=missing, ckpt_dir=tmp_path / "models", output_dir=out))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "ConfigExpression" not in proc.stderr
    line = _last_line(proc)
    assert line.startswith(f"error: {missing}: ") and "set --dataset_dir to the" in line, line
    assert line.endswith(f"(full log: {out / 'run.log'})"), line
    log = (out / "run.log").read_text()
    assert "Traceback (most recent call last)" in log and "BadInputError" in log
    # the folder holds only the failed run's log: the same command with the right folder may use it
    assert sorted(p.name for p in out.iterdir()) == ["run.log"]


def test_ckpt_export_of_a_model_trained_with_other_settings_names_the_overrides(oct_smoke_run, tmp_path):
    ckpt, _ = oct_smoke_run  # ResNet-50 (at smoke.yaml's 32 px: the size does not matter to an export)
    conf = bundle_dir(OCT) / "configs"
    common = ["--ckpt_file", str(ckpt / "model.pt"), "--meta_file", str(conf / "metadata.json"), "--config_file",
              str(conf / "inference.yaml"), "--bundle_root", str(bundle_dir(OCT)), "--ckpt_dir", str(ckpt)]
    # the demo's trap the other way round: the command names another arch than the model was trained with
    proc = _bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), *common, "--arch",
                   "resnet18")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "state_dict" not in proc.stderr
    line = _last_line(proc)
    assert line.startswith(f"error: {ckpt / 'model.pt'}: the model was trained with other settings (arch: model "
                           "'resnet50' vs run 'resnet18'); run with --arch \"resnet50\""), line
    assert not (tmp_path / "model.ts").exists()
    proc = _bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "model.ts").stat().st_size > 0


def test_the_commands_the_demo_prints_run_as_printed(oct_demo, oct_smoke_run, tmp_path):
    """The demo's last lines (evaluate, infer, export, TensorBoard) for a model trained with smoke.yaml: each
    command line is run in bash as printed."""
    ckpt, train_out = oct_smoke_run
    out = tmp_path / "demo"
    shutil.copytree(ckpt, out / "models")
    (out / "runs").mkdir()
    shutil.copytree(train_out, out / "runs" / "train")
    info = {"dataset_dir": str(oct_demo), "inference_dir": str(oct_demo / "test")}
    text = next_steps(bundle_dir(OCT), [SMOKE], out, info)
    commands = [line for line in text.splitlines() if line and not line.startswith("#") and "paste" not in line]
    assert len(commands) == 4, text
    evaluate, infer, export, tensorboard = commands
    assert "evaluate.yaml" in evaluate and "inference.yaml" in infer and "ckpt_export" in export
    assert tensorboard.endswith(f"tensorboard {out / 'runs' / 'train'}")
    for cmd in (evaluate, infer, export):
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=quiet_env(), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{cmd}\n{(proc.stdout + proc.stderr)[-4000:]}"
        if cmd is infer:  # inference shows its progress in files (8 test images of the demo)
            assert "8/8" in proc.stderr and "files/s" in proc.stderr, proc.stderr[-2000:]
    metrics = json.loads((out / "runs" / "evaluate_2" / "metrics.json").read_text())
    assert metrics["n"] == 8
    assert (out / "runs" / "inference_2" / "predictions.csv").is_file()
    assert (out / "models" / "model.ts").stat().st_size > 0
    # the tensorboard line names an existing program and a run folder with event files
    program = tensorboard.split(" tensorboard ")[0].strip("'")
    assert program == "medplugin" or os.access(program, os.X_OK), tensorboard
    assert list((out / "runs" / "train").rglob("events.out.tfevents.*"))


def _interrupt_after_first_checkpoint(cmd: list[str], out, stderr) -> int:
    """Run ``cmd`` in a process group of its own; after the first epoch's checkpoint under ``out``, send SIGINT to the
    whole group, as a terminal's Ctrl-C does (torchrun and its workers all get it). Returns the exit status."""
    import signal
    import time

    with open(stderr, "w") as err_file:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(cmd, cwd=REPO, env=quiet_env(), stdout=subprocess.DEVNULL, stderr=err_file,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while not list((out / "checkpoints").glob("training_checkpoint_*.pt")):
                assert proc.poll() is None, stderr.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 600 s"
                time.sleep(0.5)
            time.sleep(1)  # the checkpoint written in full (atomic rename: it exists only when complete)
            assert proc.poll() is None, "the run ended before Ctrl-C: " + stderr.read_text()[-3000:]
            os.killpg(proc.pid, signal.SIGINT)
            return proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_ctrl_c_names_the_last_checkpoint_and_the_resume_command(oct_demo, tmp_path):
    """Ctrl-C after the first epoch's checkpoint: one line, no KeyboardInterrupt traceback."""
    out = tmp_path / "train"
    args = _train_args(dataset_dir=oct_demo, ckpt_dir=tmp_path / "models", output_dir=out, num_epochs=500)
    stderr = tmp_path / "stderr.txt"
    assert _interrupt_after_first_checkpoint([sys.executable, "-m", "monai.bundle", *args], out, stderr) != 0
    err = stderr.read_text()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"interrupted: the last checkpoint written is {out}/checkpoints/training_checkpoint_"), line
    assert " -m monai.bundle run " in line and line.endswith(f"--resume {out}"), line
    assert "--num_epochs 500" in line
    # a fresh run: ignite's "resuming from iteration 0" (it takes every start for a resume) is not shown
    assert "resuming from iteration" not in err and "resuming from iteration" not in (out / "run.log").read_text()


@pytest.mark.slow  # two training processes
def test_ctrl_c_under_torchrun_names_the_torchrun_resume_command_once(oct_demo, tmp_path):
    """Ctrl-C to ``torchrun --nproc_per_node=2``: rank 0 alone says which checkpoint was written last and gives the
    torchrun command that resumes; no worker prints a KeyboardInterrupt traceback. (torchrun itself, the launcher
    around the bundle, then ends with its own SignalException traceback: that process is not the bundle's.)"""
    out = tmp_path / "train"
    args = _train_args(dataset_dir=oct_demo, ckpt_dir=tmp_path / "models", output_dir=out, num_epochs=500)
    args[args.index("--config_file") + 1] = json.dumps(config_files(OCT, ["train.yaml", "multi_gpu_train.yaml"],
                                                                    SMOKE))
    stderr = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", *args]
    assert _interrupt_after_first_checkpoint(cmd, out, stderr) != 0
    err = stderr.read_text()
    assert "KeyboardInterrupt" not in err, err[-3000:]
    said = [ln for ln in err.splitlines() if "interrupted: the last checkpoint written is" in ln]
    assert len(said) == 1 and said[0].startswith("[rank0]: interrupted: "), err[-3000:]
    line = said[0]
    assert f"{out}/checkpoints/training_checkpoint_" in line, line
    assert "continue with: torchrun --nproc_per_node=2 -m monai.bundle run " in line, line
    assert "multi_gpu_train.yaml" in line and line.endswith(f"--resume {out}"), line
    # the checkpoint it names is on disk, complete
    ckpt = line.split("the last checkpoint written is ")[1].split(" ")[0]
    assert torch.load(ckpt, weights_only=True)["trainer"]["iteration"] > 0


def test_smoke_training_never_hands_the_network_a_last_batch_of_one(cxr_demo, tmp_path):
    """The chest demo under smoke.yaml left a last batch of one, and DenseNet-121's batch norm on its 1x1 map
    stopped training ("Expected more than 1 value per channel"): here batch_size = training images - 1."""
    from monai.bundle import ConfigParser

    name = "chest_xray_classification"
    parser = ConfigParser()
    parser.read_config(config_files(name, "train.yaml", SMOKE))
    parser.update({"dataset_dir": str(cxr_demo), "val_fraction": 0.3})
    n = len(parser.get_parsed_content("datalist_all")["training"])
    assert n > 3 and parser.get_parsed_content("arch") == "densenet121"
    out = tmp_path / "train"
    proc = _bundle("run", "--bundle_root", str(bundle_dir(name)), "--config_file",
                   json.dumps(config_files(name, "train.yaml", SMOKE)), "--dataset_dir", str(cxr_demo),
                   "--val_fraction", "0.3", "--batch_size", str(n - 1), "--ckpt_dir", str(tmp_path / "models"),
                   "--output_dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()


def test_an_unknown_class_folder_names_the_option_that_skips_it(oct_demo, tmp_path):
    data = tmp_path / "OCT2017"
    shutil.copytree(oct_demo, data)
    (data / "train" / "OTHER").mkdir()
    (data / "train" / "OTHER" / "x.jpeg").write_bytes(next((data / "test" / "CNV").glob("*.jpeg")).read_bytes())
    proc = _bundle(*_train_args(dataset_dir=data, ckpt_dir=tmp_path / "models", output_dir=tmp_path / "train"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = _last_line(proc)
    assert "unknown class folder 'OTHER'" in proc.stderr, proc.stderr[-2000:]
    assert line.startswith("error: ") and "--on_bad_input skip" in line, line
