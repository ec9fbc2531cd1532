"""Knee MRI classifiers: MRNet-style 2.5D or 3D ResNet-18, with three transfer modes.

The transfer modes are the three compared for knee MRI by the MRNet line of work (Bien et al. 2018, PLOS
Medicine; and its follow-ups comparing ImageNet fine-tuning, training from scratch and frozen-feature SVMs):

- ``fine_tune``: start from ``pretrained`` weights (ImageNet by default in the bundle) and train the whole
  network;
- ``scratch``: random initialisation, train the whole network (``pretrained`` is ignored);
- ``feature_extraction``: the backbone is frozen (so it needs published weights: ``pretrained: none`` is
  refused) and its pooled features go to a scikit-learn ``SVC``
  (Cortes and Vapnik 1995) fitted by :func:`fit_svm_head`. The fitted SVC is copied into :class:`SVMHead`,
  a plain torch module whose buffers (standardisation, support vectors, dual coefficients, intercepts,
  kernel) are part of the network's state dict, so it is saved in ``model.pt`` with the rest of the network,
  loaded with ``torch.load(weights_only=True)`` (no pickle), exported to TorchScript/ONNX, and used by the
  bundle's evaluation and inference like any head.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings

import numpy as np
import torch
from torch import nn

from medplugin.networks.mrnet import MRNET_BACKBONES, MRNet, resnet3d18
from medplugin.networks.weights import refuse_frozen_from_scratch

__all__ = [
    "KNEE_ARCHS",
    "TRANSFER_MODES",
    "KNEE_NORMALIZATION",
    "SVMHead",
    "knee_classifier",
    "knee_cam_layer",
    "knee_head",
    "extract_features",
    "fit_svm_head",
]

logger = logging.getLogger(__name__)

KNEE_ARCHS = ("mrnet", "resnet3d18")
TRANSFER_MODES = ("fine_tune", "scratch", "feature_extraction")
KNEE_NORMALIZATION = (0.449, 0.226)
"""Mean and std applied after each volume is scaled to [0, 1]: ImageNet's RGB means averaged to one gray level."""


class SVMHead(nn.Module):
    """A fitted support vector classifier as a torch module: standardise, kernel, decision values.

    Holds what scikit-learn's ``SVC`` needs to predict (Cortes and Vapnik 1995; libsvm, Chang and Lin 2011):
    the feature mean and scale of the standardisation, and per binary machine ``m`` its support vectors,
    dual coefficients and intercept, for a linear or RBF kernel. Two classes use one machine whose decision
    value ``d`` gives the logits ``(-d / 2, d / 2)`` (softmax = ``sigmoid(d)``); more classes use one
    one-vs-rest machine per class and its decision value is that class's logit. Everything is a buffer, so
    the fitted head travels in the state dict; the number of support vectors is taken from the state dict
    when it is loaded.

    Args:
        in_features: feature size.
        num_classes: number of classes (>= 2).
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for an SVM head, got {num_classes}.")
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        m = 1 if num_classes == 2 else num_classes
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        self.register_buffer("support", torch.zeros(m, 0, in_features))
        self.register_buffer("dual_coef", torch.zeros(m, 0))
        self.register_buffer("intercept", torch.zeros(m))
        self.register_buffer("gamma", torch.tensor(1.0))
        self.register_buffer("rbf", torch.tensor(True))
        self.register_buffer("fitted", torch.tensor(False))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("support", "dual_coef"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.zeros_like(state_dict[key]))  # the fitted SVC's number of vectors
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for features ``(B, in_features)``."""
        z = (features - self.mean) / self.scale
        dot = torch.einsum("bf,mnf->bmn", z, self.support)
        if bool(self.rbf):
            d2 = (z * z).sum(-1)[:, None, None] + (self.support * self.support).sum(-1)[None] - 2 * dot
            k = torch.exp(-self.gamma * d2.clamp_min(0))
        else:
            k = dot
        dec = (k * self.dual_coef[None]).sum(-1) + self.intercept
        if self.num_classes == 2:
            return torch.cat([-dec / 2, dec / 2], dim=1)
        return dec

    def set_svc(self, mean: np.ndarray, scale: np.ndarray, machines: list, rbf: bool, gamma: float) -> None:
        """Copy fitted scikit-learn binary ``SVC`` machines (one, or one per class) into the buffers."""
        n = max(len(m.support_vectors_) for m in machines)
        sv = torch.zeros(len(machines), n, self.in_features)
        dc = torch.zeros(len(machines), n)
        b = torch.zeros(len(machines))
        for i, m in enumerate(machines):
            k = len(m.support_vectors_)
            sv[i, :k] = torch.as_tensor(m.support_vectors_, dtype=torch.float32)
            dc[i, :k] = torch.as_tensor(m.dual_coef_[0], dtype=torch.float32)
            b[i] = float(m.intercept_[0])
        dev = self.mean.device
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=dev)
        self.scale = torch.as_tensor(scale, dtype=torch.float32, device=dev)
        self.support, self.dual_coef, self.intercept = sv.to(dev), dc.to(dev), b.to(dev)
        self.gamma = torch.tensor(float(gamma), device=dev)
        self.rbf = torch.tensor(bool(rbf), device=dev)
        self.fitted = torch.tensor(True, device=dev)


def knee_classifier(
    arch: str = "mrnet",
    backbone: str = "resnet18",
    num_classes: int = 2,
    transfer: str = "fine_tune",
    pretrained: str | os.PathLike | None = None,
    dropout: float = 0.0,
    slice_channels: str = "repeat",
    pretrained_path: str | os.PathLike | None = None,
) -> nn.Module:
    """Build the knee MRI classifier for ``(B, 1, slices, H, W)`` volumes.

    ``arch="mrnet"``: :class:`~medplugin.networks.mrnet.MRNet` (Bien et al. 2018), a 2D ``backbone`` shared by
    the slices, per-slice average pooling, max over slices, linear head. ``arch="resnet3d18"``: MONAI's 3D
    ResNet-18 (Hara et al. 2018) with a ``(3, 7, 7)`` stem of stride ``(1, 2, 2)`` (knee exams have few,
    thick slices), ``backbone`` unused. ``transfer`` as in the module docstring; with ``feature_extraction``
    the head is an unfitted :class:`SVMHead` (fit it with :func:`fit_svm_head`) and the backbone is frozen.

    Args:
        arch: ``"mrnet"`` or ``"resnet3d18"``.
        backbone: MRNet's 2D backbone: ``"alexnet"``, ``"resnet18"``, ``"densenet121"`` or ``"vgg16"``.
        num_classes: number of classes (4 ACL conditions, or 2 for healthy/unhealthy).
        transfer: ``"fine_tune"``, ``"scratch"`` or ``"feature_extraction"``.
        pretrained: starting weights of the backbone: ``"imagenet"`` (torchvision's, MRNet backbones only),
            ``"none"`` (random; refused with ``feature_extraction``), a local file (torchvision layout; MONAI's
            ResNet layout for the 3D net), or ``None`` (random, for networks whose trained weights are loaded
            afterwards). Ignored with ``transfer="scratch"``.
        dropout: dropout before MRNet's linear head.
        slice_channels: MRNet's ``"repeat"`` (gray to 3 channels) or ``"adapt"`` (one-channel first conv).
        pretrained_path: deprecated name of ``pretrained`` for a local file.

    Raises:
        ValueError: unknown ``arch``, ``backbone`` or ``transfer``, ``num_classes < 2``, or
            ``pretrained: none`` with ``feature_extraction``.
        BadInputError: unreadable or mismatched ``pretrained`` weights (``WeightsUnavailableError`` for a
            published file neither cached nor downloadable here).
    """
    if arch not in KNEE_ARCHS:
        raise ValueError(f"arch must be one of {KNEE_ARCHS}, got {arch!r}.")
    if transfer not in TRANSFER_MODES:
        raise ValueError(f"transfer must be one of {TRANSFER_MODES}, got {transfer!r}.")
    if arch == "mrnet" and backbone not in MRNET_BACKBONES:
        raise ValueError(f"backbone must be one of {MRNET_BACKBONES}, got {backbone!r}.")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}.")
    if pretrained_path is not None:
        if pretrained is not None:
            raise ValueError(f"give pretrained or its old name pretrained_path, not both (got {pretrained!r} and "
                             f"{pretrained_path!r}).")
        warnings.warn("pretrained_path is deprecated: use pretrained (imagenet | none | a file)", DeprecationWarning,
                      stacklevel=2)
        pretrained = pretrained_path
    frozen = transfer == "feature_extraction"
    refuse_frozen_from_scratch(pretrained, frozen, "transfer feature_extraction (an SVC on frozen backbone features)")
    start = pretrained
    if transfer == "scratch" and pretrained is not None:
        if str(pretrained).lower() != "none":
            logger.info("transfer='scratch': pretrained %s is not used; the network starts from random weights",
                        pretrained)
        start = "none"
    if arch == "mrnet":
        net = MRNet(backbone, num_classes, pretrained=start, freeze_backbone=frozen,
                    slice_channels=slice_channels, dropout=dropout)
        if frozen:
            net.head = SVMHead(net.num_features, num_classes)
        return net
    net = resnet3d18(1, num_classes, pretrained=start, conv1_t_size=(3, 7, 7), conv1_t_stride=(1, 2, 2))
    if frozen:
        for p in net.parameters():
            p.requires_grad_(False)
        net.fc = SVMHead(net.fc.in_features, num_classes)
    return net


@functools.cache
def knee_cam_layer(arch: str = "mrnet", backbone: str = "resnet18") -> str:
    """Name of the module whose output Grad-CAM weights: MRNet's last feature ReLU, or the 3D ResNet's ``layer4``."""
    if arch == "resnet3d18":
        return "layer4"
    if arch != "mrnet":
        raise ValueError(f"arch must be one of {KNEE_ARCHS}, got {arch!r}.")
    return MRNet(backbone, 2).cam_layer


def knee_head(network: nn.Module) -> nn.Module:
    """The classifier head of a :func:`knee_classifier` network (DDP-wrapped is fine)."""
    net = network.module if hasattr(network, "module") and isinstance(network.module, nn.Module) else network
    return net.head if isinstance(net, MRNet) else net.fc


def extract_features(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled backbone features ``(B, F)``: the input of the head, for :func:`knee_classifier` networks."""
    net = network.module if hasattr(network, "module") and isinstance(network.module, nn.Module) else network
    if isinstance(net, MRNet):
        return net.features(x)
    captured = []
    handle = knee_head(net).register_forward_pre_hook(lambda m, inp: captured.append(inp[0]))
    try:
        net(x)
    finally:
        handle.remove()
    return captured[0]


def fit_svm_head(
    network: nn.Module,
    dataloader,
    device: str | torch.device = "cpu",
    c: float = 1.0,
    kernel: str = "rbf",
    balanced: bool = True,
    image_key: str = "image",
    label_key: str = "label",
) -> dict:
    """Fit the ``feature_extraction`` mode's SVC on frozen backbone features and copy it into the network.

    Features of every batch of ``dataloader`` (deterministic preprocessing) are standardised (mean 0, std 1)
    and a scikit-learn ``SVC(kernel, C=c, gamma="scale")`` is fitted: one machine for two classes, one
    one-vs-rest machine per class otherwise. The result goes into the network's :class:`SVMHead`.

    Args:
        network: a :func:`knee_classifier` network built with ``transfer="feature_extraction"``.
        dataloader: training batches with ``image`` and ``label``.
        device: where to run the backbone.
        c: the SVC's ``C``.
        kernel: ``"rbf"`` or ``"linear"``.
        balanced: ``class_weight="balanced"`` (the class-imbalance handling of this mode).
        image_key: batch key of the volumes.
        label_key: batch key of the labels.

    Returns:
        ``{"n": samples, "train_accuracy": float, "support_vectors": [per machine]}``.

    Raises:
        TypeError: the network's head is not an :class:`SVMHead`.
        ValueError: bad ``kernel``, or a class without training samples.
    """
    from sklearn.svm import SVC

    head = knee_head(network)
    if not isinstance(head, SVMHead):
        raise TypeError(
            f"fit_svm_head needs a network built with transfer='feature_extraction', got a {type(head).__name__} head."
        )
    if kernel not in ("rbf", "linear"):
        raise ValueError(f"kernel must be 'rbf' or 'linear', got {kernel!r}.")
    was_training = network.training
    network.eval()
    feats, labels = [], []
    with torch.no_grad():
        for batch in dataloader:
            feats.append(extract_features(network, batch[image_key].to(device)).float().cpu())
            labels.append(torch.as_tensor(batch[label_key]).reshape(-1).long())
    network.train(was_training)
    x = torch.cat(feats).numpy().astype(np.float64)
    y = torch.cat(labels).numpy()
    k = head.num_classes
    missing = sorted(set(range(k)) - set(y.tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no training samples: the SVC cannot be fitted.")
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    z = (x - mean) / scale
    targets = [y == 1] if k == 2 else [y == c_ for c_ in range(k)]
    machines = []
    for t in targets:
        svc = SVC(kernel=kernel, C=c, gamma="scale", class_weight="balanced" if balanced else None)
        svc.fit(z, t.astype(int))
        machines.append(svc)
    gamma = float(machines[0]._gamma) if kernel == "rbf" else 1.0
    head.set_svc(mean, scale, machines, rbf=kernel == "rbf", gamma=gamma)
    with torch.no_grad():
        logits = head(torch.as_tensor(x, dtype=torch.float32, device=head.mean.device)).cpu().double().numpy()
    decision = np.stack([m.decision_function(z) for m in machines], axis=1)
    ours = logits[:, 1:] - logits[:, :1] if k == 2 else logits
    if not np.allclose(ours, decision, atol=1e-3 * max(1.0, float(np.abs(decision).max()))):
        raise RuntimeError("the torch SVM head disagrees with scikit-learn's decision_function: please report this.")
    pred = logits.argmax(1)
    info = {"n": int(len(y)), "train_accuracy": float((pred == y).mean()),
            "support_vectors": [int(len(m.support_vectors_)) for m in machines]}
    logger.info("fitted the SVC on %d feature vectors (%d features): training accuracy %.4f, support vectors %s",
                info["n"], x.shape[1], info["train_accuracy"], info["support_vectors"])
    return info
