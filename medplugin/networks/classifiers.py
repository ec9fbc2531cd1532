"""2D image classifiers with their input conventions kept in one registry.

Each architecture's entry keeps together what must never drift apart (as torchxrayvision does): how to
build it, the layer Grad-CAM hooks, the intensity normalisation its ImageNet weights expect, and how
torchvision-layout weight names map onto it.
"""


import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from monai.networks.nets import DenseNet121, EfficientNetBN, ResNet, SEResNet50
from monai.utils import optional_import
from torch import nn

from medplugin.networks.pretrained import load_matching, read_state_dict

__all__ = [
    "ArchSpec",
    "ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ResNetClassifier",
    "DenseNetClassifier",
    "InceptionV3Transfer",
    "SEResNetClassifier",
    "EfficientNetClassifier",
    "classifier",
    "input_normalization",
    "cam_layer",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _FreezableMixin:
    """Keeps a frozen backbone frozen: no gradients and batch-norm statistics held in eval mode."""

    head_prefixes: tuple[str, ...] = ()
    freeze_backbone: bool = False

    def _apply_freeze(self) -> None:
        for name, p in self.named_parameters():  # type: ignore[attr-defined]
            if not name.startswith(self.head_prefixes):
                p.requires_grad_(not self.freeze_backbone)

    def train(self, mode: bool = True):  # keep the signature of nn.Module.train
        super().train(mode)  # type: ignore[misc]
        if self.freeze_backbone and mode:
            for name, m in self.named_modules():  # type: ignore[attr-defined]
                if name and not name.startswith(self.head_prefixes) and isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


class ResNetClassifier(_FreezableMixin, ResNet):
    """MONAI ResNet-50 (or -18/-34/-101) for 2D classification, laid out like torchvision's ResNet.

    The stem is torchvision's (7x7 convolution, stride 2), so 224x224 inputs cost what they cost there and
    torchvision ImageNet weights load key for key (He et al. 2016, "Deep residual learning for image
    recognition").

    Args:
        in_channels: input channels (ImageNet weights are adapted: summed for grayscale).
        num_classes: output logits.
        depth: 18, 34, 50 or 101.
        freeze_backbone: train the final linear layer only (batch-norm statistics frozen too).
    """

    head_prefixes = ("fc.",)
    _LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
               101: ("bottleneck", (3, 4, 23, 3))}

    def __init__(self, in_channels: int = 1, num_classes: int = 2, depth: int = 50, freeze_backbone: bool = False):
        if depth not in self._LAYERS:
            raise ValueError(f"depth must be one of {sorted(self._LAYERS)}, got {depth!r}.")
        block, layers = self._LAYERS[depth]
        super().__init__(
            block=block, layers=layers, block_inplanes=[64, 128, 256, 512], spatial_dims=2,
            n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2, num_classes=num_classes,
            bias_downsample=False,
        )
        self.freeze_backbone = freeze_backbone
        self._apply_freeze()


class DenseNetClassifier(_FreezableMixin, DenseNet121):
    """MONAI DenseNet-121 for 2D classification (Huang et al. 2017; CheXNet, Rajpurkar et al. 2017).

    Args:
        in_channels: input channels.
        num_classes: output logits.
        freeze_backbone: train the final linear layer only.
    """

    head_prefixes = ("class_layers.",)

    def __init__(self, in_channels: int = 1, num_classes: int = 2, freeze_backbone: bool = False):
        super().__init__(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)
        self.freeze_backbone = freeze_backbone
        self._apply_freeze()


class InceptionV3Transfer(_FreezableMixin, nn.Module):
    """torchvision Inception-v3 base with a new global pooling + dense head (Kermany et al., Cell 2018).

    The Cell paper's transfer learning: ImageNet Inception-v3 convolutional layers kept frozen, a new
    classification head trained on OCT. Input 299x299.

    Args:
        in_channels: input channels (the stem is adapted for grayscale).
        num_classes: output logits.
        freeze_backbone: keep the Inception base frozen (the paper's setting; default True).
        dropout: dropout before the dense layer.
    """

    head_prefixes = ("head.",)

    def __init__(self, in_channels: int = 1, num_classes: int = 2, freeze_backbone: bool = True, dropout: float = 0.5):
        super().__init__()
        models, has_tv = optional_import("torchvision.models")
        if not has_tv:
            raise ImportError("InceptionV3Transfer needs torchvision: pip install 'medplugin[vision]'.")
        net = models.inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        if in_channels != 3:
            old = net.Conv2d_1a_3x3.conv
            net.Conv2d_1a_3x3.conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, bias=False)
        net.fc = nn.Identity()
        net.avgpool = nn.Identity()
        net.dropout = nn.Identity()
        self.base = net
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(2048, num_classes)
        )
        self.freeze_backbone = freeze_backbone
        self._apply_freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(b, name)(x)
        return self.head(x)


class SEResNetClassifier(_FreezableMixin, SEResNet50):
    """MONAI SE-ResNet-50 for 2D classification (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018).

    The stem (``layer0``) is a 7x7 stride-2 convolution and a stride-2 max-pool, as in ResNet-50. Weight
    names follow Cadene's ``pretrainedmodels`` layout (``layer0.conv1``, ..., ``last_linear``).

    Args:
        in_channels: input channels.
        num_classes: output logits.
        freeze_backbone: train the final linear layer only.
    """

    head_prefixes = ("last_linear.",)

    def __init__(self, in_channels: int = 3, num_classes: int = 2, freeze_backbone: bool = False):
        super().__init__(spatial_dims=2, in_channels=in_channels, num_classes=num_classes)
        self.freeze_backbone = freeze_backbone
        self._apply_freeze()


class EfficientNetClassifier(_FreezableMixin, EfficientNetBN):
    """MONAI EfficientNet (B0 by default) for 2D classification (Tan and Le, "EfficientNet: Rethinking Model
    Scaling for Convolutional Neural Networks", ICML 2019). Never downloads: ``pretrained_path`` of
    :func:`classifier` loads a local file in the ``efficientnet_pytorch`` layout MONAI uses.

    Args:
        in_channels: input channels.
        num_classes: output logits.
        freeze_backbone: train the final linear layer only.
        model_name: ``efficientnet-b0`` ... ``efficientnet-b7``.
    """

    head_prefixes = ("_fc.",)

    def __init__(self, in_channels: int = 3, num_classes: int = 2, freeze_backbone: bool = False,
                 model_name: str = "efficientnet-b0"):
        super().__init__(model_name, pretrained=False, progress=False, spatial_dims=2, in_channels=in_channels,
                         num_classes=num_classes)
        self.freeze_backbone = freeze_backbone
        self._apply_freeze()


def _drop_prefixes(*prefixes: str) -> Callable[[str], str | None]:
    def key_map(k: str) -> str | None:
        return None if k.startswith(prefixes) else k

    return key_map


_DENSE = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.((?:norm|relu|conv)[12]\..*)$")


def _densenet_key(k: str) -> str | None:
    if k.startswith("classifier."):
        return None
    m = _DENSE.match(k)
    return f"{m.group(1)}.layers.{m.group(2)}" if m else k


def _inception_key(k: str) -> str | None:
    return None if k.startswith(("fc.", "AuxLogits.")) else f"base.{k}"


def _head_free(k: str) -> str | None:
    return None if k.startswith("fc.") else k


@dataclass(frozen=True)
class ArchSpec:
    """What belongs to one architecture: builder, default input size, Grad-CAM layer, weight-name mapping."""

    build: Callable[..., nn.Module]
    image_size: int
    cam_layer: str
    key_map: Callable[[str], str | None]
    first_conv: str


ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(lambda **kw: ResNetClassifier(depth=18, **kw), 224, "layer4", _head_free, "conv1.weight"),
    "resnet50": ArchSpec(lambda **kw: ResNetClassifier(depth=50, **kw), 224, "layer4", _head_free, "conv1.weight"),
    "densenet121": ArchSpec(DenseNetClassifier, 224, "class_layers.relu", _densenet_key, "features.conv0.weight"),
    "inception_v3": ArchSpec(InceptionV3Transfer, 299, "base.Mixed_7c", _inception_key,
                             "base.Conv2d_1a_3x3.conv.weight"),
    # stem conv+BN+ReLU+max-pool = layer0; the CAM layer is the last stage as for ResNet
    "seresnet50": ArchSpec(SEResNetClassifier, 224, "layer4", _drop_prefixes("last_linear."), "layer0.conv1.weight"),
    # `_swish` is shared by stem and head, so Grad-CAM hooks the head's batch norm
    "efficientnet_b0": ArchSpec(EfficientNetClassifier, 224, "_bn1", _drop_prefixes("_fc."), "_conv_stem.weight"),
}


def _spec(arch: str) -> ArchSpec:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {sorted(ARCHS)}.")
    return ARCHS[arch]


def classifier(
    arch: str = "resnet50",
    in_channels: int = 1,
    num_classes: int = 2,
    pretrained_path: str | None = None,
    freeze_backbone: bool | None = None,
) -> nn.Module:
    """Build a 2D classifier from the registry, optionally initialised from torchvision ImageNet weights.

    Args:
        arch: one of ``ARCHS`` (``resnet50``, ``resnet18``, ``densenet121``, ``inception_v3``, ``seresnet50``,
            ``efficientnet_b0``).
        in_channels: 1 for grayscale, 3 for RGB; first-layer ImageNet kernels are adapted.
        num_classes: number of output logits.
        pretrained_path: a local torchvision-layout state dict (e.g. ``resnet50-11ad3fa6.pth``); its
            classification layer is ignored. Nothing is downloaded.
        freeze_backbone: train only the new head. ``None`` takes the architecture's default (frozen for
            ``inception_v3`` as in the Cell paper, fine-tuned otherwise).

    Returns:
        the network, in training mode.
    """
    spec = _spec(arch)
    kwargs = {"in_channels": int(in_channels), "num_classes": int(num_classes)}
    if freeze_backbone is not None:
        kwargs["freeze_backbone"] = bool(freeze_backbone)
    net = spec.build(**kwargs)
    if pretrained_path:
        state = read_state_dict(pretrained_path)
        report = load_matching(net, state, key_map=spec.key_map, first_conv=spec.first_conv,
                               skip_prefixes=net.head_prefixes)
        backbone_missing = [k for k in report["missing"] if not k.startswith(net.head_prefixes)]
        if backbone_missing:
            raise ValueError(
                f"{pretrained_path}: {len(backbone_missing)} backbone tensors of {arch} found no match in the file "
                f"(e.g. {backbone_missing[:3]}): is it a torchvision {arch} state dict?"
            )
    return net


def input_normalization(arch: str, in_channels: int = 1) -> tuple[list[float], list[float]]:
    """The ImageNet mean and std (0..1 scale) for ``in_channels`` inputs; grayscale uses the channel means.

    Applied to every image whether or not ImageNet weights are loaded, so a model is never trained under
    one normalisation and run under another.
    """
    _spec(arch)
    if in_channels == 1:
        return [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if in_channels > 3:  # RGB then extra maps already in [0, 1] (e.g. fundus lesion-candidate channels)
        return list(IMAGENET_MEAN) + [0.0] * (in_channels - 3), list(IMAGENET_STD) + [1.0] * (in_channels - 3)
    raise ValueError(f"in_channels must be 1 or 3 (or more: RGB plus extra maps) for ImageNet normalisation, got {in_channels!r}.")


def cam_layer(arch: str) -> str:
    """Name of the module whose output Grad-CAM uses for ``arch``."""
    return _spec(arch).cam_layer
