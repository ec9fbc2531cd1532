"""Task networks and their registry (architecture, input size, normalisation, CAM layer, weights)."""

from medplugin.networks.classifiers import (
    ARCHS,
    DenseNetClassifier,
    InceptionV3Transfer,
    ResNetClassifier,
    cam_layer,
    classifier,
    input_normalization,
)
from medplugin.networks.pretrained import adapt_input_channels, load_matching, read_state_dict

__all__ = [
    "ARCHS",
    "DenseNetClassifier",
    "InceptionV3Transfer",
    "ResNetClassifier",
    "adapt_input_channels",
    "cam_layer",
    "classifier",
    "input_normalization",
    "load_matching",
    "read_state_dict",
]
