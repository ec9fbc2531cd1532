"""LearningRateLogger on a tiny ignite engine, read back with TensorBoard's own event reader."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from medplugin.handlers import LearningRateLogger


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_one_scalar_per_epoch_at_the_epochs_start(tmp_path):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    engine = Engine(lambda e, b: opt.step())
    writer = SummaryWriter(str(tmp_path))
    LearningRateLogger(writer, opt).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    engine.run([0, 1], max_epochs=3)
    writer.close()
    got = _scalars(tmp_path)
    assert list(got) == ["learning_rate"]
    assert [s for s, _ in got["learning_rate"]] == [1, 2, 3]
    assert [v for _, v in got["learning_rate"]] == pytest.approx([0.1, 0.05, 0.025])


def test_parameter_groups_get_their_own_tags(tmp_path):
    backbone, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opt = torch.optim.SGD([{"params": backbone.parameters(), "lr": 1e-4}, {"params": head.parameters()}], lr=1e-2)
    engine = Engine(lambda e, b: None)
    writer = SummaryWriter(str(tmp_path))
    LearningRateLogger(writer, opt, tag="lr").attach(engine)
    engine.run([0], max_epochs=2)
    writer.close()
    got = _scalars(tmp_path)
    assert sorted(got) == ["lr/group0", "lr/group1"]
    assert [v for _, v in got["lr/group0"]] == pytest.approx([1e-4, 1e-4])
    assert [v for _, v in got["lr/group1"]] == pytest.approx([1e-2, 1e-2])
