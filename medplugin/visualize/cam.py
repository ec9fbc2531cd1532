"""Grad-CAM for 2D and 3D networks, with hooks whose lifetime is owned and bounded.

Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization".
The hook handling follows pytorch-grad-cam's ``ActivationsAndGradients``: hooks are stored, used for one
forward pass, and removed; the network is never left changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ActivationCapture", "GradCAM", "grad_cam_from_activations", "normalize_maps"]


class ActivationCapture:
    """Context manager that records the output of one module during forward passes.

    The recorded activation keeps its autograd graph, so gradients of any later output with respect to it
    can be taken with ``torch.autograd.grad`` (one cheap partial backward, no hooks on the backward pass).
    A frozen module's output is made to require grad so Grad-CAM works on frozen backbones too.

    Args:
        network: the model.
        layer: the module itself, or its dotted name in ``network.named_modules()``.
    """

    def __init__(self, network: nn.Module, layer: str | nn.Module):
        self.network = network
        self.module = _find_module(network, layer)
        self.activation: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the CAM layer must output a tensor, got {type(output).__name__}.")
        if torch.is_grad_enabled() and not output.requires_grad:
            output = output.detach().requires_grad_(True)
        self.activation = output
        return output

    def __enter__(self) -> ActivationCapture:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _find_module(network: nn.Module, layer: str | nn.Module) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(network.named_modules())
    if layer not in modules:
        near = [n for n in modules if n and n.split(".")[-1] == str(layer).split(".")[-1]][:5]
        raise ValueError(f"layer {layer!r} not found in {type(network).__name__}; similar names: {near}.")
    return modules[layer]


def normalize_maps(cams: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each map of a ``(B, 1, *spatial)`` batch to [0, 1] independently (a flat map becomes 0)."""
    flat = cams.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    out = (flat - lo) / (hi - lo).clamp_min(eps)
    return out.view_as(cams)


def grad_cam_from_activations(
    logits: torch.Tensor,
    activation: torch.Tensor,
    class_idx: torch.Tensor | Sequence[int] | int | None = None,
    output_size: Sequence[int] | None = None,
    retain_graph: bool = False,
) -> torch.Tensor:
    """Grad-CAM maps from logits and the activation captured during the same forward pass.

    Args:
        logits: ``(B, num_classes)`` network output, still attached to its graph.
        activation: ``(B, K, *spatial)`` feature maps, attached to the same graph; or ``(B * S, K, h, w)`` per-slice
            maps of a 2.5D network (slices of volume ``b`` in rows ``b * S : (b + 1) * S``), which give
            ``(B, 1, S, h, w)`` per-slice maps weighted and scaled per volume.
        class_idx: class per sample (tensor or sequence of length B), one class for all, or ``None`` for the
            predicted class.
        output_size: spatial size to upsample the maps to (the input size); ``None`` keeps the feature size.
        retain_graph: keep the graph for further calls (e.g. maps for several classes).

    Returns:
        ``(B, 1, *output_size)`` maps in [0, 1], detached.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}.")
    b = logits.shape[0]
    if class_idx is None:
        idx = logits.argmax(dim=1)
    elif isinstance(class_idx, int):
        idx = torch.full((b,), class_idx, dtype=torch.long, device=logits.device)
    else:
        idx = torch.as_tensor(class_idx, dtype=torch.long, device=logits.device).reshape(-1)
        if idx.numel() != b:
            raise ValueError(f"class_idx has {idx.numel()} entries for a batch of {b}.")
    score = logits.gather(1, idx[:, None]).sum()
    (grads,) = torch.autograd.grad(score, activation, retain_graph=retain_graph)
    if activation.shape[0] != b:
        # 2.5D networks (e.g. MRNet) run a 2D backbone on B * S slices: (B * S, K, h, w) -> (B, K, S, h, w), so
        # the channel weights come from the whole volume and the maps of one volume share one scale
        if activation.shape[0] % b:
            raise ValueError(f"activation batch {activation.shape[0]} is not a multiple of the logits' batch {b}.")
        s = activation.shape[0] // b
        activation = activation.reshape(b, s, *activation.shape[1:]).transpose(1, 2)
        grads = grads.reshape(b, s, *grads.shape[1:]).transpose(1, 2)
    spatial = tuple(range(2, activation.dim()))
    weights = grads.float().mean(dim=spatial, keepdim=True)
    cams = F.relu((weights * activation.detach().float()).sum(dim=1, keepdim=True))
    if output_size is not None and tuple(cams.shape[2:]) != tuple(output_size):
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(output_size)]
        cams = F.interpolate(cams, size=tuple(output_size), mode=mode, align_corners=False)
    return normalize_maps(cams)


class GradCAM:
    """Grad-CAM for a classification network (2D or 3D).

    Each call runs one forward pass with a temporary hook on ``layer``, then one partial backward to it.
    The network's training mode is set to eval for the call and restored afterwards; its parameters'
    gradients are not touched.

    Args:
        network: a classifier returning ``(B, num_classes)`` logits.
        layer: the module (or its dotted name) whose output is weighted, e.g. ``"layer4"``.

    Example::

        cam = GradCAM(net, "layer4")
        maps, logits = cam(images)            # maps: (B, 1, H, W) in [0, 1]
    """

    def __init__(self, network: nn.Module, layer: str | nn.Module):
        self.network = network
        self.layer = layer
        _find_module(network, layer)  # fail early on a wrong name

    def __call__(
        self, x: torch.Tensor, class_idx: torch.Tensor | Sequence[int] | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(maps, logits)`` for input ``x`` of shape ``(B, C, *spatial)``."""
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.enable_grad(), ActivationCapture(self.network, self.layer) as cap:
                logits = self.network(x)
                if cap.activation is None:
                    raise RuntimeError(f"layer {self.layer!r} was not run by the forward pass.")
                maps = grad_cam_from_activations(logits, cap.activation, class_idx, output_size=x.shape[2:])
        finally:
            self.network.train(was_training)
        return maps, logits.detach()
