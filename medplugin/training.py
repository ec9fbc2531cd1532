"""Optimisers and schedules selected by name from bundle configs."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["build_optimizer"]


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """``adam``, ``adamw`` or ``sgd`` (Nesterov momentum) over the parameters that require grad.

    Frozen parameters (``freeze_backbone``) are left out, so they get neither updates nor weight decay.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: is the whole network frozen?")
    name = str(name).lower()
    if lr <= 0:
        raise ValueError(f"learning_rate must be positive, got {lr!r}.")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {name!r}.")
