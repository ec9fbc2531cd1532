"""An inferer that returns predictions and keeps what Grad-CAM needs of the same forward pass."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from monai.inferers import Inferer
from torch import nn

from medplugin.utils import as_flag
from medplugin.visualize.cam import CapturedGradCAM, flat_map_warning

__all__ = ["GradCAMInferer"]

logger = logging.getLogger(__name__)


class GradCAMInferer(Inferer):
    """Run the network once with its graph kept up to ``layer``, so Grad-CAM costs one partial backward.

    Used as a bundle's ``inferer`` where CAMs are written (evaluation, inference): the evaluator's own forward
    pass is the one explained (:class:`medplugin.visualize.cam.CapturedGradCAM`, which says why MONAI's
    ``GradCAM`` is not used). The evaluator runs under ``torch.no_grad()``; this inferer re-enables gradients
    for its forward pass only, and the returned logits are detached. The graph of the last batch is kept until
    the next batch: :meth:`cams` gives one map per sample and frees it, :meth:`cams_for` gives the maps of any
    (sample, class) pairs (multi-label findings) and keeps it, so several handlers can ask; :meth:`release`
    frees it. A ``layer`` whose output is a single cell at this input size (no map can localise) is
    warned about once.

    Args:
        layer: dotted name of the module whose output Grad-CAM weights (e.g. ``"layer4"``).
        enabled: when ``False`` it behaves like ``SimpleInferer`` (no graph, no maps).
    """

    def __init__(self, layer: str, enabled: bool = True) -> None:
        super().__init__()
        self.layer = layer
        self.enabled = as_flag(enabled, "enabled")  # '--save_cams false' arrives as a string
        self._cam: CapturedGradCAM | None = None
        self._checked = False

    @property
    def ready(self) -> bool:
        """Whether the last batch can be explained."""
        return self._cam is not None and self._cam.ready

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        """Return the detached logits of ``network(inputs)``."""
        self._cam = None
        if not self.enabled:
            return network(inputs, *args, **kwargs)
        cam = CapturedGradCAM(network, self.layer)
        logits = cam.forward(inputs, *args, **kwargs)
        self._cam = cam
        if not self._checked and cam.ready:
            self._checked = True
            why = flat_map_warning(cam.feature_size, self.layer, inputs.shape[2:])
            if why:
                logger.warning(why)
        return logits

    def _require(self) -> CapturedGradCAM:
        if not self.ready:
            raise RuntimeError("no batch to explain: call the inferer first (with enabled=True).")
        return self._cam  # type: ignore[return-value]

    def cams(self, class_idx: torch.Tensor | Sequence[int] | int | None = None) -> torch.Tensor:
        """Grad-CAM maps ``(B, 1, *input_spatial)`` in [0, 1] of the last batch (predicted class by default);
        frees the graph."""
        return self._require().maps(classes=class_idx, keep=False)

    def cams_for(self, samples: Sequence[int], labels: Sequence[int]) -> torch.Tensor:
        """Maps ``(K, 1, *input_spatial)`` in [0, 1] for the pairs ``(samples[k], labels[k])`` of the last batch;
        the graph is kept for further calls."""
        return self._require().maps(samples, labels, keep=True)

    def release(self) -> None:
        """Free the graph of the last batch."""
        self._cam = None

