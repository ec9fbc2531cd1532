"""Heat-map overlays of class activation maps on images, written as PNG; maps and masks written as NIfTI."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from medplugin.utils import atomic_write

__all__ = ["to_display", "overlay_cam", "save_png", "save_nifti", "resize_map"]


def to_display(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Any ``(C, H, W)``/``(H, W)`` image -> ``(H, W, 3)`` uint8, min-max scaled (C = 1 or 3; with more
    channels, e.g. RGBA or RGB plus fundus candidate maps, the first three are shown)."""
    img = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if img.ndim == 3 and img.shape[0] > 3:
        img = img[:3]
    if img.ndim == 3:
        if img.shape[0] not in (1, 3):
            raise ValueError(f"expected (C, H, W) with C in (1, 3), got shape {img.shape}.")
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    elif img.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {img.shape}.")
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    img = (img * 255).clip(0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img


def resize_map(cam: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2D map (any leading singleton dims) to ``size`` ``(H, W)``."""
    t = torch.as_tensor(np.asarray(cam.detach().cpu() if isinstance(cam, torch.Tensor) else cam), dtype=torch.float32)
    t = t.reshape(1, 1, *t.shape[-2:])
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return t[0, 0].numpy()


def overlay_cam(
    image: np.ndarray | torch.Tensor, cam: np.ndarray | torch.Tensor, alpha: float = 0.4, colormap: str = "jet"
) -> np.ndarray:
    """Blend a [0, 1] map over an image: ``(H, W, 3)`` uint8, the map resized to the image.

    Args:
        image: ``(C, H, W)`` or ``(H, W)`` image, any range.
        cam: map of any size; values in [0, 1].
        alpha: weight of the heat map.
        colormap: a matplotlib colormap name.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
    from matplotlib import colormaps

    base = to_display(image).astype(np.float32)
    heat = resize_map(cam, base.shape[:2]).clip(0, 1)
    colour = colormaps[colormap](heat)[..., :3] * 255.0
    return ((1 - alpha) * base + alpha * colour).clip(0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` or ``(H, W)`` uint8 array as PNG, atomically."""
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG"))


def save_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> None:
    """Write ``data`` as NIfTI with ``affine`` as its qform and sform (units mm), atomically; gzip for ``.gz``."""
    import gzip

    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    payload = gzip.compress(raw, compresslevel=6) if str(path).endswith(".gz") else raw

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(payload)

    atomic_write(path, _write)
