"""The run guard's pieces, in-process: which overrides are unknown (against the real bundle configs), what the last
line says for each failure, the resume command. The runs through the real runner are in
tests/bundles/test_first_hour.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from medplugin.errors import BadInputError
from medplugin.export_check import check_trained_model
from medplugin.run_guard import (
    UnknownKeyError,
    check_overrides,
    error_line,
    resume_command,
    unknown_keys,
)

REPO = Path(__file__).resolve().parent.parent
OCT = REPO / "bundles" / "retina_oct_classification" / "configs"
TRAIN_EVAL = [str(OCT / "train.yaml"), str(OCT / "evaluate.yaml")]


@pytest.fixture(scope="module")
def oct_config() -> dict:
    return ConfigParser.load_config_files(TRAIN_EVAL)


def test_a_misspelled_hyperparameter_names_the_one_meant(oct_config):
    assert unknown_keys(["num_epoch"], oct_config) == ["unknown key 'num_epoch'; did you mean 'num_epochs'?"]
    assert unknown_keys(["batchsize"], oct_config) == ["unknown key 'batchsize'; did you mean 'batch_size'?"]
    assert unknown_keys(["dataset_dri", "zzz_nothing"], oct_config) == [
        "unknown key 'dataset_dri'; did you mean 'dataset_dir'?", "unknown key 'zzz_nothing'"]
    # MONAI's own run arguments are suggested too (a misspelled one becomes an override)
    assert unknown_keys(["config_files"], oct_config) == ["unknown key 'config_files'; did you mean 'config_file'?"]


def test_every_key_of_the_merged_configs_and_paths_into_them_are_known(oct_config):
    top = [k for k in oct_config if k != "_meta_"]
    assert {"num_epochs", "batch_size", "dataset_dir", "ckpt_dir", "output_dir", "datalist", "resume"} <= set(top)
    assert unknown_keys(top, oct_config) == []
    # '#'-paths (and MONAI's '::' spelling), list positions, a new argument of a component, the guard's own --debug
    assert unknown_keys(["validate#dataset#data", "train::trainer::max_epochs", "train#handlers#0",
                         "train#dataloader#prefetch_factor", "debug"], oct_config) == []
    assert unknown_keys(["validate#datset#data"], oct_config) == [
        "unknown key 'validate#datset#data'; did you mean 'validate#dataset#data'?"]
    assert unknown_keys(["split#seed"], oct_config) == ["unknown key 'split#seed': 'split' has no 'seed'"]


def test_check_overrides_reads_the_config_files_it_is_given():
    check_overrides(["image_size", "validate#dataset#data"], TRAIN_EVAL)  # evaluate.yaml's '#' keys merged in
    with pytest.raises(UnknownKeyError, match=r"unknown key 'num_epoch'; did you mean 'num_epochs'\? \(the settings "
                                              r"are at the top of .*train\.yaml"):
        check_overrides(["num_epoch"], TRAIN_EVAL)
    # inference.yaml is standalone: a training-only key is unknown there
    with pytest.raises(UnknownKeyError, match="unknown key 'num_epochs'"):
        check_overrides(["num_epochs"], str(OCT / "inference.yaml"))


def test_the_last_line_unwraps_monai_and_names_file_reason_and_what_to_do(tmp_path):
    bad = BadInputError("/data/OCT2017", "dataset folder not found", hint="set --dataset_dir to the OCT2017 folder")
    try:
        try:
            raise bad
        except BadInputError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $medplugin.data.oct2017_datalist(...)") from e
    except RuntimeError as wrapped:
        context, line = error_line(wrapped, tmp_path / "run.log")
    assert context == []
    assert line == (f"error: /data/OCT2017: dataset folder not found; set --dataset_dir to the OCT2017 folder "
                    f"(full log: {tmp_path / 'run.log'})")


def test_a_list_of_bad_files_is_printed_above_the_summary_line():
    e = BadInputError("/d", "2 bad item(s) (on_bad_input='fail'):\n  /d/a: empty\n  /d/b: empty",
                      hint="run with --on_bad_input skip")
    context, line = error_line(e, None)
    assert context == ["  /d/a: empty", "  /d/b: empty"]
    assert line == "error: /d: 2 bad item(s) (on_bad_input='fail'); run with --on_bad_input skip"


def test_a_dataloader_worker_error_and_other_errors():
    worker = RuntimeError("Caught BadInputError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                          "call last):\n  File ...\nmedplugin.errors.BadInputError: /x.png: not a PNG file")
    assert error_line(worker, "/r/run.log")[1] == "error: /x.png: not a PNG file (full log: /r/run.log)"
    other = error_line(ZeroDivisionError("division by zero"), "/r/run.log")[1]
    assert other == ("error: ZeroDivisionError: division by zero (the full traceback is in /r/run.log; --debug true "
                     "prints it here)")


def test_the_resume_command_keeps_the_run_and_names_the_folder(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cmd = resume_command("/runs/train_1", ["run", "--bundle_root", "b", "--config_file", "['b/train.yaml','s.yaml']",
                                          "--resume", "true", "--num_epochs", "3"])
    assert cmd.endswith(" -m monai.bundle run --bundle_root b --config_file \"['b/train.yaml','s.yaml']\" "
                        "--num_epochs 3 --resume /runs/train_1")
    assert cmd.split(" -m ")[0] in ("python", sys.executable)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resume_command("/r", ["run"]).startswith("torchrun --nproc_per_node=2 -m monai.bundle run --resume /r")


def test_weights_trained_with_other_settings_are_refused_with_the_overrides(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"arch": "resnet18", "image_size": 64, "normalization": [[0], [1]],
                                                     "split": {"patients": "x"}}))
    expected = {"arch": "resnet50", "image_size": 224, "normalization": [[0.5], [0.5]], "split": {"patients": "y"}}
    with pytest.raises(BadInputError, match=r"model\.pt: the model was trained with other settings \(arch: model "
                                            r"'resnet18' vs run 'resnet50', image_size: model 64 vs run 224\); run "
                                            r"with --arch \"resnet18\" --image_size 64"):
        check_trained_model(tmp_path, expected)
    assert check_trained_model(tmp_path, {**expected, "arch": "resnet18", "image_size": 64})  # the rest not compared
    assert check_trained_model(tmp_path / "fresh", expected)  # no model.json: nothing to compare


def test_ignites_resume_note_is_dropped_unless_the_run_really_resumes():
    """ignite logs "resuming from iteration 0" at every fresh start and at every validation after the first (MONAI's
    engines set max_epochs first); only a resume from a checkpoint (iteration > 0) is news to the user."""
    import logging

    from medplugin.run_guard import _DropFreshStart

    def shown(name: str, msg: str) -> bool:
        return _DropFreshStart().filter(logging.LogRecord(name, logging.INFO, __file__, 1, msg, None, None))

    note = "Engine run resuming from iteration {}, epoch {} until {} epochs"
    assert not shown("ignite.engine.SupervisedTrainer", note.format(0, 0, 8))
    assert not shown("ignite.engine.SupervisedEvaluator", note.format(0, 1, 2))
    assert shown("ignite.engine.SupervisedTrainer", note.format(24, 2, 4))
    assert shown("ignite.engine.SupervisedTrainer", note.format(240, 20, 40))
    assert shown("medplugin", note.format(0, 0, 8))  # not ignite's
