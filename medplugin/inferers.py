"""Inferers that return predictions and keep what is needed for class activation maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import Inferer
from torch import nn

from medplugin.visualize.cam import ActivationCapture, grad_cam_from_activations

__all__ = ["GradCAMInferer"]


class GradCAMInferer(Inferer):
    """Run the network once with its graph kept up to ``layer``, so Grad-CAM costs one partial backward.

    Used as a bundle's ``inferer`` where CAMs are written (evaluation, inference). The evaluator runs under
    ``torch.no_grad()``; this inferer re-enables gradients for its forward pass only. The returned logits are
    detached; :meth:`cams` then gives the maps of the last batch and frees the graph.

    Args:
        layer: dotted name of the module whose output Grad-CAM weights (e.g. ``"layer4"``).
        enabled: when ``False`` it behaves like ``SimpleInferer`` (no graph, no maps).
    """

    def __init__(self, layer: str, enabled: bool = True) -> None:
        super().__init__()
        self.layer = layer
        self.enabled = enabled
        self._last: tuple[torch.Tensor, torch.Tensor, tuple[int, ...]] | None = None

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        """Return the detached logits of ``network(inputs)``."""
        self._last = None
        if not self.enabled:
            return network(inputs, *args, **kwargs)
        with torch.enable_grad(), ActivationCapture(network, self.layer) as cap:
            logits = network(inputs, *args, **kwargs)
        if cap.activation is not None:
            self._last = (logits, cap.activation, tuple(inputs.shape[2:]))
        return logits.detach()

    def cams(self, class_idx: torch.Tensor | Sequence[int] | int | None = None) -> torch.Tensor:
        """Grad-CAM maps ``(B, 1, *input_spatial)`` in [0, 1] of the last batch (predicted class by default)."""
        if self._last is None:
            raise RuntimeError("no batch to explain: call the inferer first (with enabled=True).")
        logits, activation, size = self._last
        self._last = None
        with torch.enable_grad():  # handlers may run inside the evaluator's no_grad context
            return grad_cam_from_activations(logits, activation, class_idx, output_size=size)
