"""Class activation maps and overlays."""

from medplugin.visualize.cam import ActivationCapture, GradCAM, grad_cam_from_activations, normalize_maps
from medplugin.visualize.overlay import overlay_cam, resize_map, save_png, to_display

__all__ = [
    "ActivationCapture",
    "GradCAM",
    "grad_cam_from_activations",
    "normalize_maps",
    "overlay_cam",
    "resize_map",
    "save_png",
    "to_display",
]
