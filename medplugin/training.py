"""Optimisers and schedules selected by name from bundle configs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["DevicePrepareBatch", "build_optimizer", "lr_step_input", "prepare_network"]


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


def lr_step_input(lr_scheduler: Any, validator: Any, metric: str) -> Callable[[Any], tuple]:
    """The ``step_transform`` of MONAI's ``LrScheduleHandler`` that fits whatever scheduler a config holds.

    Epoch schedules (cosine annealing, step decay, ...) step without an argument. ``ReduceLROnPlateau`` steps on
    this epoch's validation ``metric`` (as CheXNet decayed its learning rate tenfold whenever the validation loss
    stopped falling, Rajpurkar et al. 2017), so the trainer must run the validator before the scheduler handler,
    every epoch.

    Args:
        lr_scheduler: the config's scheduler.
        validator: the validation engine (``validate#evaluator``).
        metric: the name in ``validator.state.metrics`` a plateau schedule watches (e.g. ``"val_loss"``).

    Returns:
        ``trainer -> ()`` or ``trainer -> (value,)``; the latter raises ``RuntimeError`` when the validator has not
        run in this epoch (``val_interval`` other than 1, or handlers in the wrong order) or has no ``metric``.
    """
    if not isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return lambda trainer: ()

    def plateau_input(trainer) -> tuple:
        validated = getattr(validator.state, "epoch", None)
        if validated != trainer.state.epoch:
            raise RuntimeError(f"a ReduceLROnPlateau schedule steps on each epoch's {metric}, but the last validation "
                               f"was at epoch {validated} and this is epoch {trainer.state.epoch}: run with "
                               "--val_interval 1 (and the ValidationHandler before the LrScheduleHandler).")
        if metric not in validator.state.metrics:
            raise RuntimeError(f"a ReduceLROnPlateau schedule watches {metric!r}, which the validator does not compute "
                               f"(it has {sorted(validator.state.metrics)}).")
        return (float(validator.state.metrics[metric]),)

    return plateau_input


def prepare_network(network: torch.nn.Module, device: torch.device | str, channels_last: bool = False,
                    compile: bool | str = False) -> torch.nn.Module:
    """Move ``network`` to ``device`` for training, optionally channels-last and compiled, keeping the module.

    The module object (and so its ``state_dict`` keys, its layers for CAM hooks, and what checkpoint handlers
    save) stays the same: compilation uses ``nn.Module.compile`` in place rather than wrapping the module.

    Args:
        network: the network.
        device: where it trains.
        channels_last: ``torch.channels_last`` memory format (faster convolutions for 2D networks on
            tensor-core GPUs; leave off on the CPU and for 3D networks).
        compile: ``False``; ``True`` (``torch.compile`` with its default backend); or a backend name
            (e.g. ``"eager"``, ``"aot_eager"``, ``"inductor"``).
    """
    network = network.to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    if compile:
        network.compile(**({} if compile is True else {"backend": str(compile)}))
    return network


class DevicePrepareBatch:
    """A MONAI ``prepare_batch`` that copies ``image``/``label`` to the device, then augments and formats there.

    Pass it as ``prepare_batch`` to ``SupervisedTrainer`` / ``SupervisedEvaluator``. With ``augmentation`` (e.g.
    :class:`medplugin.transforms.BatchRandAugment`) random augmentation runs on the whole batch on the GPU
    after the copy, instead of per image in data-loader workers. ``channels_last`` puts 4-D images in
    ``torch.channels_last`` format to match a channels-last network.

    Args:
        augmentation: callable on the image batch ``(B, C, H, W)`` on the device, or ``None``.
        channels_last: convert 4-D image batches to channels-last.
        image_key: key of the image in the batch dict.
        label_key: key of the label.
    """

    def __init__(self, augmentation=None, channels_last: bool = False, image_key: str = "image",
                 label_key: str = "label") -> None:
        self.augmentation = augmentation
        self.channels_last = bool(channels_last)
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False,
                 **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(image, label)`` on ``device``."""
        image = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata.get(self.label_key)
        if label is not None:
            label = torch.as_tensor(label).to(device=device, non_blocking=non_blocking, **kwargs)
        if self.augmentation is not None:
            image = self.augmentation(image)
        if self.channels_last and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, label
