"""MRNet-style 2.5D classification of knee MRI volumes, and a 3D ResNet-18 alternative.

torchvision is optional for the package: it is imported inside the functions that build its backbones.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable

import torch
from monai.utils import optional_import
from torch import nn

from medplugin.errors import BadInputError
from medplugin.networks.pretrained import load_matching
from medplugin.networks.weights import StartingWeights, refuse_frozen_from_scratch, resolve_pretrained

__all__ = ["MRNet", "MRNET_BACKBONES", "resnet3d18"]

logger = logging.getLogger(__name__)

MRNET_BACKBONES = ("alexnet", "resnet18", "densenet121", "vgg16")


def _torchvision_models():
    models, has_tv = optional_import("torchvision.models")
    if not has_tv:
        raise ImportError("MRNet's 2D backbones need torchvision: pip install 'medplugin[vision]' (torchvision)")
    return models


def _build_backbone(name: str) -> tuple[nn.Module, int, str, str, Callable[[str], str | None]]:
    """Return ``(features, num_features, cam_layer, first_conv, key_map)`` for a torchvision backbone.

    ``cam_layer`` and ``first_conv`` are names inside :class:`MRNet` (prefixed ``backbone.``); ``key_map`` turns
    a (current) torchvision state-dict key into the MRNet key, or ``None`` for keys MRNet does not use
    (classifiers); old DenseNet key names are brought to the current ones first, by ``load_matching``.
    """
    models = _torchvision_models()
    if name in ("alexnet", "vgg16"):
        if name == "vgg16":
            # only the features: building torchvision's VGG-16 would also initialise 120 M classifier weights
            features = models.vgg.make_layers(models.vgg.cfgs["D"], batch_norm=False)
            for m in features.modules():
                if isinstance(m, nn.Conv2d):  # torchvision VGG's initialisation
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        else:
            features = models.alexnet(weights=None).features
        last_relu = max(i for i, m in enumerate(features) if isinstance(m, nn.ReLU))
        num = [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels

        def key_map(k: str) -> str | None:
            return "backbone." + k[len("features."):] if k.startswith("features.") else None

        return features, num, f"backbone.{last_relu}", "backbone.0.weight", key_map
    if name == "resnet18":
        net = models.resnet18(weights=None)
        parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        features = nn.Sequential(OrderedDict((p, getattr(net, p)) for p in parts))

        def key_map(k: str) -> str | None:
            return None if k.startswith("fc.") else "backbone." + k

        return features, net.fc.in_features, "backbone.layer4", "backbone.conv1.weight", key_map
    if name == "densenet121":
        net = models.densenet121(weights=None)
        # torchvision applies a functional ReLU after ``features``: make it a module Grad-CAM can hook
        features = nn.Sequential(OrderedDict(features=net.features, relu=nn.ReLU(inplace=False)))

        def key_map(k: str) -> str | None:
            return "backbone." + k if k.startswith("features.") else None

        return features, net.classifier.in_features, "backbone.relu", "backbone.features.conv0.weight", key_map
    raise ValueError(f"backbone must be one of {MRNET_BACKBONES}, got {name!r}.")


def _one_channel_conv(conv: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(
        1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )


class MRNet(nn.Module):
    """MRNet: a 2D ImageNet backbone shared across the slices of a volume, pooled over space and slices.

    Bien et al. 2018, "Deep-learning-assisted diagnosis for knee magnetic resonance imaging: Development and
    retrospective validation of MRNet", PLOS Medicine 15(11): e1002699. Each slice goes through the backbone's
    convolutional features, is global-average-pooled to a vector, the vectors are max-pooled over the slices
    and a linear layer gives the logits. MRNet used AlexNet; ResNet-18, DenseNet-121 and VGG-16 are offered too
    (torchvision layouts, so torchvision's ImageNet weights load as published).

    Input is ``(B, 1, S, H, W)`` or ``(B, S, H, W)`` (slice-first volumes as
    :func:`medplugin.io.mrnet.read_mrnet_volume` returns them). Volumes in one batch must share ``S``: MRNet
    exams have 17-60 slices, so use ``batch_size=1`` (as MRNet) or make ``S`` equal with a transform, e.g.
    ``monai.transforms.ResizeWithPadOrCrop(spatial_size=(32, -1, -1))`` on ``(1, S, H, W)`` (cropping keeps
    the central slices, where the ACL is; padded black slices enter the max over slices like any other).
    In-plane size: AlexNet's features need ``H, W >= 63``; the others work from 32 px.

    Grad-CAM: :attr:`cam_layer` names the last convolutional feature module (its ReLU where there is one).
    Its activations have shape ``(B * S, C, h, w)``: rows ``b * S : (b + 1) * S`` are the slices of volume
    ``b``, so a class activation map computed there is a per-slice map; :meth:`per_slice` reshapes such a
    tensor to ``(B, S, ...)``.

    Args:
        backbone: ``"alexnet"``, ``"resnet18"``, ``"densenet121"`` or ``"vgg16"``.
        num_classes: outputs of the linear head (1 for one binary logit as MRNet, or the number of classes).
        pretrained: the backbone's starting weights: ``"imagenet"`` (torchvision's, through torch's cache),
            ``"none"`` (random; refused with ``freeze_backbone``), a local torchvision-layout state dict, or
            ``None`` (random, for a network whose trained weights are loaded afterwards); read with
            ``torch.load(weights_only=True)``, classifier weights of the file ignored.
        freeze_backbone: freeze the backbone's parameters (``requires_grad=False``) and keep its batch-norm
            statistics fixed (it stays in eval mode when the network is put in training mode): for linear
            probing or the feature-extraction mode (:meth:`features`).
        slice_channels: ``"repeat"`` copies each gray slice to 3 channels (as MRNet, and what ImageNet weights
            expect); ``"adapt"`` gives the first convolution one input channel (pretrained RGB kernels are
            summed), 3x cheaper in the first layer.
        dropout: dropout before the head.

    Raises:
        ValueError: an unknown ``backbone`` or ``slice_channels``, ``num_classes < 1``, or ``pretrained: none``
            with a frozen backbone.
        BadInputError: ``pretrained`` weights that cannot be read or do not fit the backbone (a
            ``WeightsUnavailableError`` when a published file is neither cached nor downloadable).
    """

    def __init__(
        self,
        backbone: str = "alexnet",
        num_classes: int = 1,
        pretrained: str | os.PathLike | None = None,
        freeze_backbone: bool = False,
        slice_channels: str = "repeat",
        dropout: float = 0.0,
    ):
        super().__init__()
        if backbone not in MRNET_BACKBONES:
            raise ValueError(f"backbone must be one of {MRNET_BACKBONES}, got {backbone!r}.")
        if slice_channels not in ("repeat", "adapt"):
            raise ValueError(f"slice_channels must be 'repeat' or 'adapt', got {slice_channels!r}.")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        self.backbone_name = backbone
        self.slice_channels = slice_channels
        self.freeze_backbone = bool(freeze_backbone)
        refuse_frozen_from_scratch(pretrained, self.freeze_backbone, "a frozen backbone")
        features, self.num_features, self.cam_layer, self._first_conv, self._key_map = _build_backbone(backbone)
        self.backbone = features
        if slice_channels == "adapt":
            parent_name, _, attr = self._first_conv[len("backbone."):].rpartition(".weight")[0].rpartition(".")
            parent = self.backbone.get_submodule(parent_name) if parent_name else self.backbone
            setattr(parent, attr, _one_channel_conv(getattr(parent, attr)))
        cam = self.get_submodule(self.cam_layer)
        if getattr(cam, "inplace", False):
            cam.inplace = False  # full backward hooks (Grad-CAM) fail on in-place modules
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, int(num_classes))
        if pretrained is not None:
            self.load_backbone(pretrained)
        if self.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()

    def load_backbone(self, pretrained: str | os.PathLike | StartingWeights) -> dict[str, list[str]]:
        """Load torchvision-layout weights (``"imagenet"``, a file, or weights already read) into the backbone.

        Every backbone tensor must be found with its shape (the first convolution is adapted to one channel
        with ``slice_channels="adapt"``); classifier tensors are ignored. ``"none"`` leaves it as initialised.
        Sets :attr:`pretrained_source`, the record ``model.json`` keeps.

        Returns:
            ``load_matching``'s report ``{"loaded", "missing", "unexpected"}`` (empty with ``"none"``).

        Raises:
            BadInputError: unreadable or unsafe file, or one for another architecture.
        """
        start = pretrained if isinstance(pretrained, StartingWeights) else resolve_pretrained(pretrained,
                                                                                              self.backbone_name)
        if start is None:
            self.pretrained_source = {"pretrained": "none"}
            logger.info("MRNet %s backbone starts from random weights (pretrained: none)", self.backbone_name)
            return {"loaded": [], "missing": [], "unexpected": []}
        path = start.record["file"]
        try:
            report = load_matching(self, start.state, key_map=self._key_map, first_conv=self._first_conv,
                                   skip_prefixes=("head.",))
        except ValueError as e:
            raise BadInputError(path, f"not {self.backbone_name} weights in torchvision layout: {e}") from e
        missing = [k for k in report["missing"] if k.startswith("backbone.")]
        if missing:
            raise BadInputError(
                path,
                f"not complete {self.backbone_name} weights in torchvision layout: {len(missing)} backbone "
                f"tensor(s) absent or of another shape, e.g. {missing[:3]}",
            )
        self.pretrained_source = start.record
        logger.info("loaded %d %s backbone tensors from %s", len(report["loaded"]), self.backbone_name, path)
        return report

    def train(self, mode: bool = True) -> MRNet:
        """Set training mode; a frozen backbone stays in eval mode (fixed batch-norm statistics)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def _slices(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        # written so that torch.jit.script compiles it (TorchScript export of the bundle)
        shape = "(" + ", ".join([str(d) for d in x.shape]) + ")"
        if x.dim() == 5:
            if x.shape[1] != 1:
                raise ValueError("a 5-D input must be (B, 1, S, H, W), got shape " + shape + ".")
            x = x[:, 0]
        elif x.dim() != 4:
            raise ValueError("input must be (B, 1, S, H, W) or (B, S, H, W), got shape " + shape + ".")
        b, s, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        x = x.reshape(b * s, 1, h, w)
        if self.slice_channels == "repeat":
            x = x.expand(-1, 3, -1, -1)
        return x, b, s

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-volume features ``(B, F)``: per-slice global average pooling, then the max over slices.

        These are the inputs of the head, used as frozen features (e.g. for a scikit-learn SVC) in the
        feature-extraction transfer mode.
        """
        x, b, s = self._slices(x)
        f = self.pool(self.backbone(x)).flatten(1)  # (B*S, F)
        return f.reshape(b, s, -1).amax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for volumes ``(B, 1, S, H, W)`` or ``(B, S, H, W)``."""
        return self.head(self.dropout(self.features(x)))

    @staticmethod
    def per_slice(t: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Reshape a per-slice tensor ``(B * S, ...)`` (e.g. a CAM from :attr:`cam_layer`) to ``(B, S, ...)``."""
        if t.shape[0] % batch_size:
            raise ValueError(f"first dimension {t.shape[0]} is not a multiple of batch_size {batch_size}.")
        return t.reshape(batch_size, t.shape[0] // batch_size, *t.shape[1:])


def resnet3d18(
    in_channels: int = 1, num_classes: int = 2, pretrained: str | os.PathLike | None = None, **kwargs
) -> nn.Module:
    """A 3D ResNet-18 (MONAI's ``ResNet`` with ``spatial_dims=3``) for whole knee volumes ``(B, C, S, H, W)``.

    He et al. 2016, "Deep residual learning for image recognition", CVPR; 3D form as in Hara et al. 2018,
    "Can spatiotemporal 3D CNNs retrace the history of 2D CNNs and ImageNet?", CVPR. The 3D alternative to
    :class:`MRNet`. ``pretrained`` is a local state dict in MONAI's ``ResNet`` key layout (e.g. a MedicalNet
    file, Chen et al. 2019; a ``module.`` prefix is removed), ``"none"`` or ``None``: there are no ImageNet
    weights for it. The ``fc`` head is left as initialised and the first convolution is adapted to
    ``in_channels``. Batch volumes must share their shape.

    Args:
        in_channels: input channels.
        num_classes: outputs of the head.
        pretrained: optional local weights file (``"none"``/``None``: random weights).
        kwargs: passed to ``monai.networks.nets.ResNet`` (e.g. ``conv1_t_stride=2``, ``shortcut_type="A"``).

    Raises:
        ValueError: ``in_channels`` or ``num_classes`` < 1, or ``pretrained="imagenet"``.
        BadInputError: a weights file that cannot be read or holds no matching tensor.
    """
    from monai.networks.nets import ResNet
    from monai.networks.nets.resnet import ResNetBlock, get_inplanes

    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}.")
    if pretrained is not None and str(pretrained).lower() == "imagenet":
        raise ValueError("pretrained='imagenet': there are no ImageNet weights for the 3D ResNet-18; pass a local "
                         "file in MONAI's ResNet layout (e.g. MedicalNet's) as pretrained PATH, or pretrained none.")
    net = ResNet(
        ResNetBlock, [2, 2, 2, 2], get_inplanes(), spatial_dims=3, n_input_channels=in_channels,
        num_classes=num_classes, **kwargs,
    )
    start = resolve_pretrained(pretrained, "resnet3d18")
    if start is not None:
        path = start.record["file"]
        try:
            report = load_matching(net, start.state, first_conv="conv1.weight", skip_prefixes=("fc.",))
        except ValueError as e:
            raise BadInputError(path, f"not 3D ResNet-18 weights in MONAI's layout: {e}") from e
        missing = [k for k in report["missing"] if not k.startswith("fc.")]
        if missing:
            logger.warning("%s: %d tensors of the 3D ResNet-18 left as initialised, e.g. %s",
                           path, len(missing), missing[:3])
    if pretrained is not None:
        net.pretrained_source = start.record if start is not None else {"pretrained": "none"}
    return net
