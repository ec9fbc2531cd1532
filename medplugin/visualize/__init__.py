"""Class activation maps (Grad-CAM), overlays and montages."""

from medplugin.visualize.cam import ActivationCapture, CapturedGradCAM, cell_centres, grad_cam_maps, normalize_maps
from medplugin.visualize.montage import cam_montage, top_slices
from medplugin.visualize.overlay import overlay_cam, resize_map, save_png, to_display

__all__ = [
    "ActivationCapture",
    "CapturedGradCAM",
    "cam_montage",
    "cell_centres",
    "grad_cam_maps",
    "normalize_maps",
    "overlay_cam",
    "resize_map",
    "save_png",
    "to_display",
    "top_slices",
]
