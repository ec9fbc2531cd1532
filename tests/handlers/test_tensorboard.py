"""LearningRateLogger and TensorBoardConfusionMatrix on a tiny ignite Engine, read back with EventAccumulator."""

from __future__ import annotations

import io

import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from medplugin.handlers import LearningRateLogger, TensorBoardConfusionMatrix


def _events(path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_learning_rate_of_every_group_every_epoch(tmp_path):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.01}])
    writer = SummaryWriter(str(tmp_path))
    engine = Engine(lambda e, b: None)
    LearningRateLogger(writer, opt).attach(engine)

    @engine.on(Events.EPOCH_COMPLETED)
    def _decay(e):
        for g in opt.param_groups:
            g["lr"] /= 2

    engine.run([0], max_epochs=3)
    writer.close()
    acc = _events(tmp_path)
    assert [(s.step, round(s.value, 6)) for s in acc.Scalars("learning_rate/group0")] == [(1, 0.1), (2, 0.05), (3, 0.025)]
    assert [round(s.value, 6) for s in acc.Scalars("learning_rate/group1")] == [0.01, 0.005, 0.0025]


def test_confusion_matrix_of_each_evaluation_with_the_trainers_epoch(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    trainer = Engine(lambda e, b: None)
    trainer.state.epoch = 5
    batch = {"label": torch.tensor([0, 1, 1, 2]), "error": ["", "", "", "x: bad"],
             "pred": torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.0, 0.0, 1.0]])}
    evaluator = Engine(lambda e, b: b)  # the output is the batch
    cm = TensorBoardConfusionMatrix(writer, ["a", "b", "c"], step_engine=trainer)
    cm.attach(evaluator)
    evaluator.run([batch, batch], max_epochs=1)
    writer.close()
    np.testing.assert_array_equal(cm.cm, [[2, 0, 0], [2, 2, 0], [0, 0, 0]])  # the bad item is left out
    acc = _events(tmp_path)
    (img,) = acc.Images("confusion_matrix")
    assert img.step == 5 and Image.open(io.BytesIO(img.encoded_image_string)).format == "PNG"
    text = acc.Tensors("confusion_matrix/counts/text_summary")[0]
    assert text.step == 5 and b"[[2, 0, 0], [2, 2, 0], [0, 0, 0]]" in text.tensor_proto.string_val[0]
