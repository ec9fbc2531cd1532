"""HParamsLogger: the run's hyperparameters in its own event folder, readable by TensorBoard's hparams plugin."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medplugin.handlers import HParamsLogger
from medplugin.handlers.hparams import hparam_value


def _read(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    return {k.split("/")[-1]: plugin_data_pb2.HParamsPluginData.FromString(v) for k, v in content.items()}, acc


def test_writes_experiment_start_and_end_into_the_runs_folder(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    engine = Engine(lambda e, b: float(b))
    HParamsLogger(writer, {"arch": "resnet50", "lr": 1e-4, "batch_size": 8, "pretrained_path": None,
                           "zoom": [0.9, 1.1], "amp": False}, ["val_accuracy"]).attach(engine)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        writer.add_scalar("val_accuracy", 0.75, e.state.epoch)

    engine.run([1, 2, 3], max_epochs=2)
    writer.close()

    assert [p.parent for p in tmp_path.rglob("events.out.tfevents.*")] == [tmp_path]  # no sub-run folder
    hp, acc = _read(tmp_path)
    assert set(hp) == {"experiment", "session_start_info", "session_end_info"}
    exp = hp["experiment"].experiment
    assert {h.name for h in exp.hparam_infos} == {"arch", "lr", "batch_size", "pretrained_path", "zoom", "amp"}
    assert [m.name.tag for m in exp.metric_infos] == ["val_accuracy"]
    got = hp["session_start_info"].session_start_info.hparams
    assert got["arch"].string_value == "resnet50" and got["lr"].number_value == pytest.approx(1e-4)
    assert got["batch_size"].number_value == 8 and got["pretrained_path"].string_value == "None"
    assert got["zoom"].string_value == "[0.9, 1.1]" and got["amp"].number_value == 0
    assert hp["session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS
    assert [s.value for s in acc.Scalars("val_accuracy")] == [0.75, 0.75]


def test_no_session_end_when_the_run_fails(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))

    def step(engine, batch):
        raise RuntimeError("diverged")

    engine = Engine(step)
    HParamsLogger(writer, {"lr": 0.1}).attach(engine)
    with pytest.raises(RuntimeError, match="diverged"):
        engine.run([1], max_epochs=1)
    writer.close()
    hp, _ = _read(tmp_path)
    assert set(hp) == {"experiment", "session_start_info"}  # TensorBoard shows the session as not finished


def test_values_and_argument_checks():
    assert [hparam_value(v) for v in (3, 0.5, "x", True, None, float("nan"), torch.tensor(2.0))] == \
        [3, 0.5, "x", True, "None", "nan", 2.0]
    with pytest.raises(ValueError, match="non-empty mapping"):
        HParamsLogger(None, {})
    with pytest.raises(ValueError, match="list of scalar tags, got the string 'val_accuracy'"):
        HParamsLogger(None, {"lr": 1}, "val_accuracy")
    # a no-op writer (ranks > 0 in a distributed run) writes nothing and does not fail
    from medplugin.utils import _NullWriter

    engine = Engine(lambda e, b: None)
    HParamsLogger(_NullWriter(), {"lr": 1}, ["val_accuracy"]).attach(engine)
    engine.run([1], max_epochs=1)
