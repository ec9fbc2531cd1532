"""TensorBoard handlers: Grad-CAM overlays of fixed images, learning rate."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from medplugin.handlers._engine import is_main_process
from medplugin.visualize.cam import GradCAM
from medplugin.visualize.overlay import overlay_cam

__all__ = ["TensorBoardCAMHandler", "LearningRateLogger"]

logger = logging.getLogger(__name__)


class TensorBoardCAMHandler:
    """Every ``interval`` epochs, write Grad-CAM overlays of the same images to TensorBoard.

    The images are loaded once (the first ``max_images`` of ``data`` through ``transform``). Each overlay
    shows the map of the true class when a label is known, titled in the tag with the prediction, so a
    reviewer sees the model's attention sharpen over epochs. The network's train/eval mode is restored.
    MONAI's ``TensorBoardImageHandler`` skips classification outputs; this one is for them.

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        network: the network being trained.
        layer: Grad-CAM layer name (see ``medplugin.networks.cam_layer``).
        data: datalist entries (``image`` path and ``label``).
        transform: the deterministic preprocessing.
        class_names: names for the tags.
        device: where to run.
        max_images: how many images.
        interval: epochs between writes.
        tag: tag prefix.
    """

    def __init__(self, summary_writer, network: torch.nn.Module, layer: str, data: Sequence[dict],
                 transform: Callable, class_names: Sequence[str], device: str | torch.device = "cpu",
                 max_images: int = 8, interval: int = 1, tag: str = "gradcam") -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images!r}.")
        self.writer = summary_writer
        self.network = network
        self.layer = layer
        self.data = list(data)[:max_images]
        self.transform = transform
        self.class_names = list(class_names)
        self.device = torch.device(device)
        self.interval = int(interval)
        self.tag = tag
        self._batch: tuple[torch.Tensor, list] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def _load(self) -> tuple[torch.Tensor, list]:
        if self._batch is None:
            items = [self.transform(dict(d)) for d in self.data]
            images = torch.stack([torch.as_tensor(np.asarray(i["image"]), dtype=torch.float32) for i in items])
            self._batch = (images, [d.get("label") for d in self.data])
        return self._batch

    def __call__(self, engine: Engine) -> None:
        if not self.data or not is_main_process():
            return
        images, labels = self._load()
        net = self.network.module if hasattr(self.network, "module") else self.network
        target = [int(lab) if isinstance(lab, (int, np.integer)) else None for lab in labels]
        cam = GradCAM(net, self.layer)
        maps, logits = cam(images.to(self.device), class_idx=None)
        if all(t is not None for t in target):
            maps, _ = cam(images.to(self.device), class_idx=target)
        preds = logits.argmax(1).tolist()
        for i, (img, m) in enumerate(zip(images, maps.cpu())):
            rgb = overlay_cam(img, m[0].numpy())
            true = self.class_names[target[i]] if target[i] is not None else "?"
            tag = f"{self.tag}/{i:02d}_true-{true}"
            self.writer.add_image(tag, rgb, engine.state.epoch, dataformats="HWC")
            self.writer.add_text(f"{tag}/prediction", self.class_names[preds[i]], engine.state.epoch)
        self.writer.flush()


class LearningRateLogger:
    """Write each optimizer parameter group's learning rate to TensorBoard every epoch.

    Args:
        summary_writer: a ``SummaryWriter``.
        optimizer: the optimizer.
        tag: scalar tag (group index appended when there are several groups).
    """

    def __init__(self, summary_writer, optimizer: torch.optim.Optimizer, tag: str = "learning_rate") -> None:
        self.writer = summary_writer
        self.optimizer = optimizer
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        groups = self.optimizer.param_groups
        for i, g in enumerate(groups):
            tag = self.tag if len(groups) == 1 else f"{self.tag}/group{i}"
            self.writer.add_scalar(tag, float(g["lr"]), engine.state.epoch)
