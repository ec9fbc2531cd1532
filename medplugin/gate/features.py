"""The pooled features of medplugin's classifiers, captured with a hook whose lifetime is owned.

The pooled features are the input of the classification layer: global-average-pooled convolutional features
(ResNet ``fc``, DenseNet ``class_layers.out``, SE-ResNet ``last_linear``, EfficientNet ``_fc``, Inception's
``head.2`` (before its 64-unit layer), MRNet's ``head`` after its max over slices, the 3D ResNet's ``fc``, an
:class:`SVMHead`). The hook is a forward *pre*-hook on that layer, stored and removed (pytorch-grad-cam's
``ActivationsAndGradients`` discipline, as :class:`medplugin.visualize.ActivationCapture`):
the network is never left changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["PooledFeatures", "pooled_layer", "collect_features", "fit_ood_statistics"]


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if hasattr(network, "module") and isinstance(network.module, nn.Module) else network


def pooled_layer(network: nn.Module) -> str:
    """The name of the layer whose input is the pooled features: the network's ``feature_layer`` attribute where it
    declares one (a head with hidden layers, as Inception-v3's 64-unit layer), else the last ``nn.Linear`` (or
    :class:`medplugin.networks.SVMHead`) of the network, which for the other classifiers is the head.

    Raises:
        ValueError: the network has no linear layer (name the layer explicitly then).
    """
    from medplugin.networks.knee import SVMHead

    net = _unwrap(network)
    declared = getattr(net, "feature_layer", None)  # a head with hidden layers names the layer after pooling
    if isinstance(declared, str):
        return declared
    names = [name for name, m in net.named_modules() if name and isinstance(m, (nn.Linear, SVMHead))]
    if not names:
        raise ValueError(f"{type(net).__name__} has no linear classification layer: give the feature layer's name.")
    return names[-1]


class PooledFeatures:
    """Context manager that records the pooled features of every forward pass while it is open.

    Args:
        network: the classifier (DDP-wrapped is fine).
        layer: the classification layer (its *input* is recorded) or its dotted name; ``None`` finds it with
            :func:`pooled_layer`.

    Example::

        with PooledFeatures(net) as pooled:
            logits = net(images)
            feats = pooled.features          # (B, F), detached

        feats, logits = PooledFeatures(net)(images)   # one eval-mode, no-grad pass
    """

    def __init__(self, network: nn.Module, layer: str | nn.Module | None = None) -> None:
        self.network = network
        net = _unwrap(network)
        self.layer_name = layer if isinstance(layer, str) else (pooled_layer(net) if layer is None else None)
        modules = dict(net.named_modules())
        if isinstance(layer, nn.Module):
            self.module = layer
        elif self.layer_name in modules:
            self.module = modules[self.layer_name]
        else:
            raise ValueError(f"layer {self.layer_name!r} not found in {type(net).__name__}.")
        self.features: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module: nn.Module, inputs: tuple) -> None:
        self.features = inputs[0].detach().flatten(1)

    def __enter__(self) -> PooledFeatures:
        if self._handle is None:
            self._handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass in eval mode without gradients: ``(features (B, F), logits)``; the mode is restored."""
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad(), self:
                logits = self.network(x)
            if self.features is None:
                raise RuntimeError(f"layer {self.layer_name!r} was not run by the forward pass.")
            return self.features, logits
        finally:
            self.network.train(was_training)


def collect_features(
    network: nn.Module,
    batches: Iterable[Any],
    image_key: str = "image",
    label_key: str | None = None,
    device: str | torch.device = "cpu",
    layer: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pooled features (and labels) of every image of a data loader, for fitting the OOD statistics.

    Args:
        network: the trained classifier.
        batches: a data loader (or any iterable) of dict batches.
        image_key: the images' key.
        label_key: the labels' key, or ``None``.
        device: where to run the network.
        layer: the classification layer's name (``None``: :func:`pooled_layer`).

    Returns:
        ``(features (N, F) float32, labels or None)``: labels ``(N,)`` for class indices (a ``(B, 1)`` label
        column is flattened), ``(N, K)`` for multi-hot labels.
    """
    capture = PooledFeatures(network, layer)
    feats, labels = [], []
    for batch in batches:
        x = batch[image_key]
        x = (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)).to(device)
        f, _ = capture(x)
        feats.append(f.float().cpu().numpy())
        if label_key is not None:
            y = batch[label_key]
            labels.append(np.asarray(y.cpu() if hasattr(y, "cpu") else y))
    if not feats:
        raise ValueError("no batches: cannot collect features from an empty data loader.")
    y = None
    if labels:
        y = np.concatenate([np.atleast_1d(v) if v.ndim <= 1 else v.reshape(len(v), -1) for v in labels])
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
    return np.concatenate(feats), y


def fit_ood_statistics(
    network: nn.Module,
    train_batches: Iterable[Any],
    val_batches: Iterable[Any],
    folder: str | os.PathLike,
    image_key: str = "image",
    label_key: str | None = None,
    classes: Sequence[str] | None = None,
    percentile: float = 99.0,
    device: str | torch.device = "cpu",
    layer: str | None = None,
) -> dict[str, Any]:
    """At the end of training: fit the Mahalanobis statistics on the training images' pooled features, set the
    threshold at ``percentile`` of the validation images' scores, write ``folder/ood.npz`` and return the
    ``"ood"`` block for ``model.json`` (:class:`medplugin.gate.MahalanobisOOD`).

    Args:
        network: the trained classifier (the weights saved as ``model.pt``).
        train_batches: the training data loader, without random augmentation (the inference preprocessing).
        val_batches: the validation data loader.
        folder: where ``model.pt`` is (``ckpt_dir``).
        image_key: the images' key.
        label_key: class-index or one-hot labels for class-conditional means (multi-class models), multi-hot labels
            for a multi-label model's additive means (:meth:`MahalanobisOOD.fit`); ``None`` fits one pooled Gaussian.
        classes: the class names, recorded.
        percentile: the validation percentile of the threshold.
        device: where to run the network.
        layer: the classification layer (``None``: :func:`pooled_layer`).
    """
    from medplugin.gate.ood import MahalanobisOOD

    layer = layer or pooled_layer(network)
    feats, labels = collect_features(network, train_batches, image_key, label_key, device, layer)
    if labels is not None and labels.ndim == 2:
        binary = np.isin(labels, (0, 1)).all()
        if binary and (labels.sum(axis=1) == 1).all():
            labels = labels.argmax(axis=1)  # one-hot: class indices
        elif not binary:
            labels = None  # soft labels: one pooled Gaussian
    ood = MahalanobisOOD.fit(feats, labels, classes=classes if labels is not None else None, feature_layer=layer)
    ood.calibrate(collect_features(network, val_batches, image_key, None, device, layer)[0], percentile)
    return ood.save(folder)
