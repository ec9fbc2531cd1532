"""Validation segmentations in TensorBoard: the 2D (lung) and 3D (knee) panel handlers on a real event file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from medplugin.handlers import TensorBoardMaskHandler
from medplugin.handlers.panels import TensorBoardPanelHandler, mask_panel


def _run(handler, batches, tmp_path) -> EventAccumulator:
    engine = Engine(lambda e, b: b)  # the output is the batch: {"image", "label", "pred"} lists
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    handler.writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    return acc


def _decode(acc, tag) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(acc.Images(tag)[0].encoded_image_string)).convert("RGB"))


def test_mask_panel_colours_reference_green_and_prediction_red():
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    label = np.zeros((8, 8), bool)
    label[1:3, 1:3] = True
    pred = np.zeros((8, 8), bool)
    pred[5:7, 5:7] = True
    p = mask_panel(image, label, pred)
    assert p.shape == (8, 24, 3) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    ref, prd = p[:, 8:16], p[:, 16:]
    assert (ref[1:3, 1:3, 1] > ref[1:3, 1:3, 0]).all() and np.allclose(ref[5:7, 5:7], p[5:7, 5:7, :])
    assert (prd[5:7, 5:7, 0] > prd[5:7, 5:7, 1]).all() and np.allclose(prd[1:3, 1:3], p[1:3, 1:3, :])


def test_2d_handler_writes_the_first_images_with_their_masks(tmp_path):
    lungs = torch.zeros(1, 16, 16)
    lungs[0, 4:12, 2:7] = 1
    pred = torch.cat([1 - lungs, lungs])  # two-channel probabilities, as the lung bundle's postprocessing gives
    batch = {"image": [torch.rand(1, 16, 16)] * 3, "label": [lungs] * 3, "pred": [pred] * 3}
    acc = _run(TensorBoardMaskHandler(SummaryWriter(str(tmp_path)), max_images=2), [batch, batch], tmp_path)
    assert sorted(acc.Tags()["images"]) == ["val_masks/0", "val_masks/1"]
    img = _decode(acc, "val_masks/0").astype(int)
    assert img.shape == (16, 48, 3)
    ref = img[:, 16:32]
    assert (ref[4:12, 2:7, 1] > ref[4:12, 2:7, 0]).all()  # the reference lung in green


def test_3d_handler_shows_the_slice_with_most_reference(tmp_path):
    label = torch.zeros(1, 5, 12, 12)
    label[0, 3, 2:10, 2:10] = 1  # all of the ACL on slice 3
    label[0, 1, 5, 5] = 1
    pred = torch.cat([1 - label, label])
    batch = {"image": [torch.rand(1, 5, 12, 12)], "label": [label], "pred": [pred]}
    acc = _run(TensorBoardMaskHandler(SummaryWriter(str(tmp_path)), max_images=4, tag="val_slices"), [batch], tmp_path)
    assert acc.Tags()["images"] == ["val_slices/0"]
    img = _decode(acc, "val_slices/0").astype(int)
    red = img[:, 24:]
    assert (red[2:10, 2:10, 0] > red[2:10, 2:10, 1]).all()  # slice 3 (64 voxels of ACL) was chosen, not slice 1


def test_the_base_is_abstract_and_checks_its_arguments(tmp_path):
    with pytest.raises(TypeError, match="abstract"):
        TensorBoardPanelHandler(None)
    with pytest.raises(ValueError, match="max_images must be >= 0, got -1"):
        TensorBoardMaskHandler(None, max_images=-1)
