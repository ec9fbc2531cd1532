"""TensorBoard handlers: learning rate, confusion matrices (CAM images are in :mod:`medplugin.handlers.cam`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from medplugin.handlers._engine import Collector, is_main_process, iter_samples

__all__ = ["LearningRateLogger", "TensorBoardConfusionMatrix"]

logger = logging.getLogger(__name__)


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


class TensorBoardConfusionMatrix(Collector):
    """Write the confusion matrix of each evaluator run to TensorBoard as an image (rows true, columns predicted).

    Args:
        summary_writer: a ``SummaryWriter``.
        class_names: class names in output order.
        step_engine: the engine whose epoch is the step (e.g. the trainer); default the evaluator's epoch.
        tag: image tag.
        pred_key: output key of the class probabilities.
        label_key: batch key of the label.
    """

    def __init__(self, summary_writer, class_names: Sequence[str], step_engine: Engine | None = None,
                 tag: str = "confusion_matrix", pred_key: str = "pred", label_key: str = "label") -> None:
        self.writer = summary_writer
        self.class_names = list(class_names)
        self.step_engine = step_engine
        self.tag, self.pred_key, self.label_key = tag, pred_key, label_key
        self.cm = np.zeros((len(self.class_names),) * 2, np.int64)

    def reset(self, engine: Engine | None = None) -> None:
        self.cm[:] = 0

    def collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            if b.get("error") or self.label_key not in b:
                continue
            self.cm[
                int(torch.as_tensor(b[self.label_key]).reshape(-1)[0]),
                int(torch.as_tensor(o[self.pred_key]).reshape(-1).argmax()),
            ] += 1

    def write(self, engine: Engine) -> None:
        from monai.utils import evenly_divisible_all_gather

        cm = evenly_divisible_all_gather(torch.as_tensor(self.cm)[None], concat=True).sum(0).numpy()
        if not is_main_process():
            return
        from matplotlib.figure import Figure  # no pyplot: no global backend state

        step = (self.step_engine or engine).state.epoch
        fig = Figure(figsize=(1.2 + 0.9 * len(self.class_names), 1.0 + 0.8 * len(self.class_names)))
        ax = fig.subplots()
        ax.imshow(cm, cmap="Blues")
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, str(v), ha="center", va="center", color="black")
        ax.set_xticks(range(len(self.class_names)), self.class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(self.class_names)), self.class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.tight_layout()
        self.writer.add_figure(self.tag, fig, step)  # closes the figure
        self.writer.add_text(f"{self.tag}/counts", str(cm.tolist()), step)
        self.writer.flush()
