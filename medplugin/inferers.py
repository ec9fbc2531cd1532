"""Inferers that return predictions and keep what is needed for class activation maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import Inferer
from torch import nn

from medplugin.visualize.cam import ActivationCapture, grad_cam_from_activations, normalize_maps

__all__ = ["GradCAMInferer", "MultiLabelGradCAMInferer"]


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


class MultiLabelGradCAMInferer(GradCAMInferer):
    """:class:`GradCAMInferer` for multi-label networks: Grad-CAM of any (sample, label) pairs of a batch.

    A multi-label classifier (e.g. 14 chest X-ray findings with sigmoid outputs) is explained per label:
    the map of each finding called positive, or of each finding that has a ground-truth box. The graph of the
    last batch is kept until the next batch (or :meth:`release`), so several handlers can ask for maps of the
    same batch. Pairs are grouped so that each backward pass takes at most one label per sample.

    Args:
        layer: dotted name of the module whose output Grad-CAM weights (e.g. ``"class_layers.relu"``).
        enabled: when ``False`` it behaves like ``SimpleInferer``.
    """

    def cams_for(self, samples: Sequence[int], labels: Sequence[int]) -> torch.Tensor:
        """Maps ``(K, 1, *input_spatial)`` in [0, 1] for the pairs ``(samples[k], labels[k])`` of the last batch."""
        if self._last is None:
            raise RuntimeError("no batch to explain: call the inferer first (with enabled=True).")
        if len(samples) != len(labels):
            raise ValueError(f"samples and labels differ in length: {len(samples)} vs {len(labels)}.")
        logits, activation, size = self._last
        b, n_labels = logits.shape
        pairs = [(int(i), int(c)) for i, c in zip(samples, labels)]
        for i, c in pairs:
            if not (0 <= i < b and 0 <= c < n_labels):
                raise ValueError(f"pair (sample {i}, label {c}) outside the batch of {b} x {n_labels} labels.")
        out: list[torch.Tensor | None] = [None] * len(pairs)
        todo = list(range(len(pairs)))
        spatial = tuple(range(2, activation.dim()))
        with torch.enable_grad():
            while todo:
                taken, rest, used = [], [], set()
                for k in todo:
                    (taken if pairs[k][0] not in used else rest).append(k)
                    used.add(pairs[k][0])
                idx = torch.tensor([pairs[k][0] for k in taken], device=logits.device)
                cls = torch.tensor([pairs[k][1] for k in taken], device=logits.device)
                (grads,) = torch.autograd.grad(logits[idx, cls].sum(), activation, retain_graph=True)
                weights = grads[idx].float().mean(dim=spatial, keepdim=True)
                maps = torch.relu((weights * activation.detach()[idx].float()).sum(dim=1, keepdim=True))
                if tuple(maps.shape[2:]) != tuple(size):
                    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
                    maps = torch.nn.functional.interpolate(maps, size=tuple(size), mode=mode, align_corners=False)
                maps = normalize_maps(maps)
                for j, k in enumerate(taken):
                    out[k] = maps[j]
                todo = rest
        if not pairs:
            return torch.zeros((0, 1, *size))
        return torch.stack(out)  # type: ignore[arg-type]

    def release(self) -> None:
        """Free the graph of the last batch."""
        self._last = None
