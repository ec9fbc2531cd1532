"""TensorBoard image panels of validation segmentations, 2D and 3D: image | reference (green) | prediction (red)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medplugin.handlers._engine import Collector, is_main_process, iter_samples

__all__ = ["TensorBoardPanelHandler", "TensorBoardMaskHandler", "mask_panel", "to_numpy"]


def to_numpy(x) -> np.ndarray:
    """``x`` (tensor or array-like) as a numpy array on the CPU."""
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def mask_panel(image: np.ndarray, label: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """``(H, 3W, 3)`` float image in [0, 1]: the 2D image, the reference (green) and the prediction (red) on it.

    The image is windowed to its 0.5-99.5 percentiles; ``label`` and ``pred`` are masks (``> 0`` is
    foreground) of the image's shape; a missing ``label`` leaves its panel plain.
    """
    lo, hi = np.percentile(image, [0.5, 99.5])
    g = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(g[..., None], 3, axis=-1)
    panels = [rgb]
    for m, colour in ((label, (0.0, 1.0, 0.0)), (pred, (1.0, 0.0, 0.0))):
        p = rgb.copy()
        if m is not None:
            sel = np.asarray(m) > 0
            p[sel] = 0.5 * p[sel] + 0.5 * np.asarray(colour)
        panels.append(p)
    return np.concatenate(panels, axis=1).astype(np.float32)


class TensorBoardPanelHandler(Collector, ABC):
    """Base of the handlers that show validation segmentations in TensorBoard, one panel per sample.

    Attach to the evaluator: the panels of the first ``max_images`` samples are collected each evaluation and
    written at its end under ``<tag>/<i>``, with the trainer's epoch as the step (MONAI's ``ValidationHandler``
    runs the evaluator with it); only the main process writes. Subclasses implement :meth:`panel`.

    Args:
        summary_writer: a TensorBoard ``SummaryWriter``.
        max_images: samples shown per evaluation (>= 0).
        tag: image tag prefix.
        image_key, label_key, pred_key: keys in the engine's output.
    """

    def __init__(self, summary_writer, max_images: int = 4, tag: str = "val_masks", image_key: str = "image",
                 label_key: str = "label", pred_key: str = "pred") -> None:
        if int(max_images) < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images!r}.")
        self.writer = summary_writer
        self.max_images = int(max_images)
        self.tag = tag
        self.keys = (image_key, label_key, pred_key)
        self._panels: list[np.ndarray] = []

    @abstractmethod
    def panel(self, image: np.ndarray, label: Any | None, pred: Any) -> np.ndarray:
        """The ``(H, W, 3)`` float image shown for one sample (its image, reference or ``None``, prediction)."""

    start_event, end_event = Events.EPOCH_STARTED, Events.EPOCH_COMPLETED  # every evaluation is one epoch

    def reset(self, engine: Engine | None = None) -> None:
        self._panels.clear()

    def collect(self, engine: Engine) -> None:
        """Add the panels of this iteration's samples, up to ``max_images`` in the evaluation."""
        for _, o in iter_samples(engine):
            if len(self._panels) >= self.max_images:
                return
            self._panels.append(self._sample_panel(o))

    def _sample_panel(self, o: Mapping) -> np.ndarray:
        image_key, label_key, pred_key = self.keys
        return self.panel(to_numpy(o[image_key]).astype(np.float32), o.get(label_key), o[pred_key])

    def write(self, engine: Engine) -> None:
        """Write the collected panels (main process only)."""
        if not self._panels or not is_main_process():
            return
        for i, panel in enumerate(self._panels):
            self.writer.add_image(f"{self.tag}/{i}", panel, global_step=engine.state.epoch, dataformats="HWC")
        if hasattr(self.writer, "flush"):
            self.writer.flush()


class TensorBoardMaskHandler(TensorBoardPanelHandler):
    """Show validation segmentations in TensorBoard as three panels: image | reference (green) | prediction (red).

    2D images are shown whole; of a 3D volume the slice (first spatial axis) with the most reference foreground
    (else predicted foreground) is shown. Foregrounds are :func:`medplugin.handlers.segmentation.foreground`
    (the most likely class is not the background, or a single channel above 0.5). Attach to the evaluator; the
    first ``max_images`` samples are written at the end of each evaluation under ``<tag>/<i>``, with the
    trainer's epoch as the step (MONAI's ``ValidationHandler`` runs the evaluator with it).

    Args:
        summary_writer: a TensorBoard ``SummaryWriter``.
        max_images: samples shown per evaluation.
        tag: image tag prefix (e.g. ``val_masks``, ``val_slices``).
        image_key, label_key, pred_key: keys in the engine's output.
    """

    def panel(self, image: np.ndarray, label: Any | None, pred: Any) -> np.ndarray:
        """The image (first channel), its reference and prediction; of a volume, its most informative slice."""
        from medplugin.handlers.segmentation import foreground

        pred = foreground(pred)
        label = None if label is None else foreground(label)
        img = image[0] if image.ndim == pred.ndim + 1 else image
        if pred.ndim == 3:
            ref = label if label is not None and label.any() else pred
            k = int(ref.reshape(ref.shape[0], -1).sum(1).argmax())
            img, pred, label = img[k], pred[k], None if label is None else label[k]
        return mask_panel(img, label, pred)
