"""LearningRateLogger and TensorBoardConfusionMatrix on tiny ignite engines, read back with TensorBoard's own event
reader."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image
from sklearn.metrics import confusion_matrix
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from medplugin.handlers import LearningRateLogger, TensorBoardConfusionMatrix
from tests.handlers._evaluator import evaluator, sample

CLASSES = ["intact", "partial tear", "full tear"]


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



def _read(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_counts_and_image_per_evaluation_at_the_trainers_epoch(tmp_path):
    labels = [0, 0, 1, 1, 2, 2, 2, 0]
    preds = np.eye(3)[[0, 1, 1, 2, 2, 2, 0, 0]] * 0.8 + 0.1
    samples = [sample(f"/knee/{i}.nii.gz", lab) for i, lab in enumerate(labels)]
    samples.append(sample("/knee/bad.nii.gz", 0, error="/knee/bad.nii.gz: not a readable NIfTI file"))
    preds = np.vstack([preds, [[0.1, 0.1, 0.8]]])  # the failed item is not counted
    engine, batches = evaluator(samples, preds, batch_size=4)
    trainer = Engine(lambda e, b: None)
    trainer.state.epoch = 7
    writer = SummaryWriter(str(tmp_path))
    TensorBoardConfusionMatrix(writer, CLASSES, step_engine=trainer, tag="val/cm").attach(engine)
    engine.run(batches, max_epochs=1)
    trainer.state.epoch = 8
    engine.run(batches, max_epochs=1)  # a second evaluation counts afresh
    writer.close()

    acc = _read(tmp_path)
    expected = confusion_matrix(labels, preds[:8].argmax(1)).tolist()
    texts = acc.Tensors("val/cm/counts/text_summary")
    assert [t.step for t in texts] == [7, 8]
    assert [t.tensor_proto.string_val[0].decode() for t in texts] == [str(expected)] * 2
    images = acc.Images("val/cm")
    assert [i.step for i in images] == [7, 8]
    with Image.open(io.BytesIO(images[0].encoded_image_string)) as im:
        assert im.format == "PNG" and min(im.size) > 100
