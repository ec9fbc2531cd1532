"""2D image classifiers with their input conventions kept in one registry.

Each architecture's entry keeps together what must never drift apart (as torchxrayvision does): how to
build it, the layer Grad-CAM hooks, the intensity normalisation its published weights expect, and how
torchvision-layout weight names map onto it. Starting weights (``pretrained``) come from
:mod:`medplugin.networks.weights`.
"""


import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from monai.networks.nets import DenseNet121, EfficientNetBN, ResNet, SEResNet50
from monai.utils import optional_import
from torch import nn

from medplugin.errors import BadInputError
from medplugin.networks.pretrained import load_matching
from medplugin.networks.weights import (
    XRV_PREFIX,
    XRV_WEIGHTS,
    copy_labelled_head,
    recorded_normalization,
    refuse_frozen_from_scratch,
    resolve_pretrained,
)

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
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # torchvision's Inception-v3 weights (Google's) expect inputs in [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


class _FreezableMixin:
    """Keeps frozen layers frozen: no gradients and batch-norm statistics held in eval mode.

    Two ways to freeze: ``freeze_backbone`` (everything but the head, ``head_prefixes``) and
    :meth:`freeze_until` (every stage before a named one, :meth:`stages`).
    """

    head_prefixes: tuple[str, ...] = ()
    trunk: str | None = None  # a child whose own children are the stages (DenseNet's ``features``)
    freeze_backbone: bool = False
    frozen_prefixes: tuple[str, ...] = ()

    def _is_frozen(self, name: str) -> bool:
        if self.freeze_backbone:
            return not name.startswith(self.head_prefixes)
        return any(name == p or name.startswith(p + ".") for p in self.frozen_prefixes)

    def _apply_freeze(self) -> None:
        for name, p in self.named_parameters():  # type: ignore[attr-defined]
            p.requires_grad_(not self._is_frozen(name))

    def stages(self) -> list[str]:
        """The network's layers in forward order, as :meth:`freeze_until` names them: the top-level modules that
        hold weights, with the ``trunk`` container (e.g. DenseNet's ``features``) opened into its own."""
        out = []
        for name, child in self.named_children():  # type: ignore[attr-defined]
            if name == self.trunk:
                out += [f"{name}.{n}" for n, c in child.named_children() if _has_weights(c)]
            elif _has_weights(child):
                out.append(name)
        return out

    def freeze_until(self, layer: str) -> None:
        """Freeze every parameter and batch-norm statistic of the layers before ``layer`` (e.g. ``"layer3"`` of a
        ResNet-50 freezes ``conv1``, ``bn1``, ``layer1`` and ``layer2``); ``layer`` and the layers after it train.

        Args:
            layer: one of :meth:`stages` after the first, by its full name or, inside the trunk, its last part
                (``"denseblock3"`` for ``"features.denseblock3"``).

        Raises:
            ValueError: ``layer`` names no stage (the message lists the valid names), or ``freeze_backbone`` is on.
        """
        if self.freeze_backbone:
            raise ValueError(f"freeze_until={layer!r} with freeze_backbone true: give one of them (freeze_backbone "
                             "already freezes every layer but the head).")
        stages = self.stages()
        matches = [i for i, s in enumerate(stages) if i > 0 and (s == layer or s.split(".")[-1] == layer)]
        if len(matches) != 1:
            raise ValueError(f"freeze_until={layer!r} is not a layer of {type(self).__name__} after its first: "
                             f"choose one of {stages[1:]}.")
        self.frozen_prefixes = tuple(stages[:matches[0]])
        self._apply_freeze()

    def train(self, mode: bool = True):  # keep the signature of nn.Module.train
        super().train(mode)  # type: ignore[misc]
        if mode and (self.freeze_backbone or self.frozen_prefixes):
            for name, m in self.named_modules():  # type: ignore[attr-defined]
                if name and self._is_frozen(name) and isinstance(m, nn.modules.batchnorm._BatchNorm):
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
    trunk = "features"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, freeze_backbone: bool = False):
        super().__init__(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)
        self.freeze_backbone = freeze_backbone
        self._apply_freeze()


class InceptionV3Transfer(_FreezableMixin, nn.Module):
    """torchvision Inception-v3 base with the Cell paper's head (Kermany et al., Cell 2018).

    The Cell paper's transfer learning: the ImageNet Inception-v3 convolutional layers kept frozen, then
    global average pooling, a 64-unit ReLU layer and a ``num_classes``-way output (softmax in the loss). Input
    299x299 with intensities in [-1, 1], what torchvision's Inception weights expect: torchvision's
    ``transform_input=True`` turns ImageNet-normalised input into exactly that; here the input is normalised
    so once (mean 0.5, std 0.5 on the [0, 1] scale, :func:`input_normalization`) and ``transform_input`` is off.

    Args:
        in_channels: input channels (the stem is adapted for grayscale).
        num_classes: output logits.
        freeze_backbone: keep the Inception base frozen (the paper's setting; default True).
        dropout: dropout between the 64-unit layer and the output.
        hidden: units of the ReLU layer (64 in the paper).
    """

    head_prefixes = ("head.",)
    trunk = "base"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, freeze_backbone: bool = True, dropout: float = 0.5,
                 hidden: int = 64):
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
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, int(hidden)), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(int(hidden), num_classes),
        )
        self.freeze_backbone = freeze_backbone
        self._apply_freeze()

    feature_layer = "head.2"  # the layer whose input is the 2048 pooled features (the head's 64-unit layer)

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
    Scaling for Convolutional Neural Networks", ICML 2019). torchvision publishes no weights in this layout:
    ``pretrained`` of :func:`classifier` takes a local file in the ``efficientnet_pytorch`` layout MONAI uses.

    Args:
        in_channels: input channels.
        num_classes: output logits.
        freeze_backbone: train the final linear layer only.
        model_name: ``efficientnet-b0`` ... ``efficientnet-b7``.
    """

    head_prefixes = ("_fc.",)
    trunk = "_blocks"

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
    # current torchvision (and torchxrayvision) names -> MONAI's DenseNet; old names are mapped before this
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
    """What belongs to one architecture: builder, default input size, Grad-CAM layer, weight-name mapping and
    the per-channel mean/std (0..1 scale) its published RGB weights expect."""

    build: Callable[..., nn.Module]
    image_size: int
    cam_layer: str
    key_map: Callable[[str], str | None]
    first_conv: str
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(lambda **kw: ResNetClassifier(depth=18, **kw), 224, "layer4", _head_free, "conv1.weight"),
    "resnet50": ArchSpec(lambda **kw: ResNetClassifier(depth=50, **kw), 224, "layer4", _head_free, "conv1.weight"),
    "densenet121": ArchSpec(DenseNetClassifier, 224, "class_layers.relu", _densenet_key, "features.conv0.weight"),
    "inception_v3": ArchSpec(InceptionV3Transfer, 299, "base.Mixed_7c", _inception_key,
                             "base.Conv2d_1a_3x3.conv.weight", INCEPTION_MEAN, INCEPTION_STD),
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
    pretrained: str | os.PathLike | None = None,
    freeze_backbone: bool | None = None,
    class_names: Sequence[str] | None = None,
    pretrained_path: str | os.PathLike | None = None,
    freeze_until: str | None = None,
) -> nn.Module:
    """Build a 2D classifier from the registry, optionally starting from published weights.

    Args:
        arch: one of ``ARCHS`` (``resnet50``, ``resnet18``, ``densenet121``, ``inception_v3``, ``seresnet50``,
            ``efficientnet_b0``).
        in_channels: 1 for grayscale, 3 for RGB; first-layer kernels are adapted (summed for grayscale).
        num_classes: number of output logits.
        pretrained: the starting weights (:func:`medplugin.networks.weights.resolve_pretrained`):
            ``"imagenet"`` (torchvision's, through torch's cache), ``"torchxrayvision:<name>"`` (DenseNet-121
            trained on chest X-rays; its outputs are mapped onto ``class_names``), ``"none"`` (random, training
            from scratch; refused with a frozen backbone), a local state dict in the architecture's layout (its
            classification layer is ignored), or ``None`` (random, no checks: for networks whose trained
            weights are loaded afterwards, as in evaluation and inference).
        freeze_backbone: train only the new head. ``None`` takes the architecture's default (frozen for
            ``inception_v3`` as in the Cell paper, fine-tuned otherwise).
        class_names: the outputs' names, needed to map a labelled starting point's outputs onto them.
        pretrained_path: deprecated name of ``pretrained`` for a local file.
        freeze_until: freeze the layers before this one, parameters and batch-norm statistics (e.g. ``"layer3"``:
            a ResNet's ``conv1``, ``bn1``, ``layer1`` and ``layer2``); the named layer and those after it train.
            Valid names are the network's ``stages()`` after the first; not with ``freeze_backbone`` true.

    Returns:
        the network, in training mode; ``network.pretrained_source`` records where its weights came from
        (``medplugin.handlers.BestModelSaver`` writes it to ``model.json``).

    Raises:
        ValueError: unknown ``arch``, ``pretrained: none`` with frozen layers, an unknown ``freeze_until`` layer, or
            weights that do not fit.
        WeightsUnavailableError: a published file neither cached nor downloadable here.
    """
    spec = _spec(arch)
    if pretrained_path is not None:
        if pretrained is not None:
            raise ValueError(f"give pretrained or its old name pretrained_path, not both (got {pretrained!r} and "
                             f"{pretrained_path!r}).")
        warnings.warn("pretrained_path is deprecated: use pretrained (imagenet | none | torchxrayvision:<name> | "
                      "a file)", DeprecationWarning, stacklevel=2)
        pretrained = pretrained_path
    if class_names is not None and len(class_names) != int(num_classes):
        raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}.")
    kwargs = {"in_channels": int(in_channels), "num_classes": int(num_classes)}
    if freeze_backbone is not None:
        kwargs["freeze_backbone"] = bool(freeze_backbone)
    elif freeze_until is not None:  # freezing up to a layer replaces an architecture's frozen default
        kwargs["freeze_backbone"] = False
    net = spec.build(**kwargs)
    if freeze_until is not None:
        net.freeze_until(str(freeze_until))
        mode = f"freeze_until {freeze_until}"
    elif arch == "inception_v3" and freeze_backbone is None:
        mode = ("arch inception_v3 (its Inception base is frozen by default, as in the Cell paper; "
                "--freeze_backbone false trains it whole)")
    else:
        mode = "freeze_backbone true"
    refuse_frozen_from_scratch(pretrained, net.freeze_backbone or bool(net.frozen_prefixes), mode)
    start = resolve_pretrained(pretrained, arch)
    if start is not None:
        source = start.record["file"]
        try:
            report = load_matching(net, start.state, key_map=spec.key_map, first_conv=spec.first_conv,
                                   skip_prefixes=net.head_prefixes)
        except ValueError as e:
            raise BadInputError(source, f"not {arch} weights: {e}") from e
        backbone_missing = [k for k in report["missing"] if not k.startswith(net.head_prefixes)]
        if backbone_missing:
            raise BadInputError(
                source, f"{len(backbone_missing)} backbone tensors of {arch} found no match in the file "
                        f"(e.g. {backbone_missing[:3]}): is it a torchvision {arch} state dict?")
        if start.labels is not None:
            if class_names is None:
                raise ValueError(f"pretrained={pretrained!r} has labelled outputs: give class_names to map them.")
            fresh = copy_labelled_head(net, start, class_names, "classifier.", "class_layers.out.")
            start.record["fresh_classes"] = fresh
    if pretrained is not None:
        net.pretrained_source = start.record if start is not None else {"pretrained": "none"}
        if start is None:
            logger.info("%s starts from random weights (pretrained: none)", arch)
    return net


def input_normalization(arch: str, in_channels: int = 1, pretrained: str | os.PathLike | None = None,
                        model_dir: str | os.PathLike | None = None) -> tuple[list[float], list[float]]:
    """The mean and std (0..1 scale) of ``in_channels`` inputs for ``arch`` and its weights.

    Training (``pretrained`` given): the convention of the starting weights: torchxrayvision's [-1024, 1024]
    range for ``torchxrayvision:<name>``, else the architecture's (ImageNet's mean/std; [-1, 1] for
    ``inception_v3``), also with ``none``, so a model is never trained under one normalisation and run under
    another. Evaluation and inference (``pretrained`` ``None``): the ``normalization`` recorded beside the
    trained weights in ``model_dir/model.json`` when there is one, else the architecture's.
    Grayscale uses the channel means; channels after the first three (extra maps already in [0, 1], e.g.
    fundus lesion-candidate channels) get mean 0, std 1.
    """
    spec = _spec(arch)
    if pretrained is None:
        recorded = recorded_normalization(model_dir)
        if recorded is not None:
            return recorded
    elif str(pretrained).startswith(XRV_PREFIX):
        name = str(pretrained)[len(XRV_PREFIX):]
        if name not in XRV_WEIGHTS:
            raise ValueError(f"unknown torchxrayvision weights {name!r}: choose one of {sorted(XRV_WEIGHTS)}.")
        return XRV_WEIGHTS[name].normalization(in_channels)
    if in_channels == 1:
        return [sum(spec.mean) / 3], [sum(spec.std) / 3]
    if in_channels == 3:
        return list(spec.mean), list(spec.std)
    if in_channels > 3:  # RGB then extra maps already in [0, 1] (e.g. fundus lesion-candidate channels)
        return list(spec.mean) + [0.0] * (in_channels - 3), list(spec.std) + [1.0] * (in_channels - 3)
    raise ValueError(f"in_channels must be 1 or 3 (or more: RGB plus extra maps) for ImageNet normalisation, "
                     f"got {in_channels!r}.")


def cam_layer(arch: str) -> str:
    """Name of the module whose output Grad-CAM uses for ``arch``."""
    return _spec(arch).cam_layer
