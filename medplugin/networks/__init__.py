"""Task networks and their registries (architecture, input size, normalisation, CAM layer, starting weights)."""

from medplugin.networks.classifiers import (
    ARCHS,
    DenseNetClassifier,
    EfficientNetClassifier,
    InceptionV3Transfer,
    ResNetClassifier,
    SEResNetClassifier,
    cam_layer,
    classifier,
    input_normalization,
)
from medplugin.networks.knee import SVMHead, fit_svm_head, knee_cam_layer, knee_classifier
from medplugin.networks.mrnet import MRNet, resnet3d18
from medplugin.networks.onnx_runtime import OnnxRuntimeNetwork, inference_network
from medplugin.networks.pretrained import adapt_input_channels, load_matching, read_state_dict
from medplugin.networks.segmentation import lung_unet, lung_unet_from_meta
from medplugin.networks.unet3d import knee_unet3d, unet3d_from_meta
from medplugin.networks.weights import (
    TORCHVISION_WEIGHTS,
    XRV_WEIGHTS,
    WeightsUnavailableError,
    known_weights,
    resolve_pretrained,
)

__all__ = [
    "OnnxRuntimeNetwork",
    "inference_network",
    "lung_unet",
    "lung_unet_from_meta",
    "ARCHS",
    "DenseNetClassifier",
    "EfficientNetClassifier",
    "SEResNetClassifier",
    "InceptionV3Transfer",
    "ResNetClassifier",
    "adapt_input_channels",
    "cam_layer",
    "classifier",
    "input_normalization",
    "knee_unet3d",
    "MRNet",
    "SVMHead",
    "fit_svm_head",
    "knee_cam_layer",
    "knee_classifier",
    "resnet3d18",
    "load_matching",
    "read_state_dict",
    "unet3d_from_meta",
    "TORCHVISION_WEIGHTS",
    "XRV_WEIGHTS",
    "WeightsUnavailableError",
    "known_weights",
    "resolve_pretrained",
]
