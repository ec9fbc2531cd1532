"""TensorBoardConfusionMatrix on a tiny evaluator engine, read back with TensorBoard's own event reader."""

from __future__ import annotations

import io

import numpy as np
from ignite.engine import Engine
from PIL import Image
from sklearn.metrics import confusion_matrix
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from medplugin.handlers import TensorBoardConfusionMatrix
from tests.handlers._evaluator import evaluator, sample

CLASSES = ["intact", "partial tear", "full tear"]


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
