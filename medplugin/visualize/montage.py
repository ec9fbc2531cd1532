"""Montages of the slices of a volume where a class activation map is strongest."""

from __future__ import annotations

import numpy as np
import torch

from medplugin.visualize.overlay import overlay_cam

__all__ = ["top_slices", "cam_montage"]


def top_slices(cam: np.ndarray | torch.Tensor, k: int = 8) -> list[int]:
    """Indices of the ``k`` slices (first axis) with the highest mean map value, in slice order."""
    c = np.asarray(cam.detach().cpu() if torch.is_tensor(cam) else cam, dtype=np.float32)
    c = c.reshape(c.shape[-3:])
    score = c.reshape(c.shape[0], -1).mean(1)
    k = max(1, min(int(k), c.shape[0]))
    return sorted(int(i) for i in np.argsort(-score, kind="stable")[:k])


def cam_montage(volume: np.ndarray | torch.Tensor, cam: np.ndarray | torch.Tensor, max_slices: int = 8,
                columns: int = 4, alpha: float = 0.4) -> tuple[np.ndarray, list[int]]:
    """Overlay the map on the ``max_slices`` most active slices and tile them, ``columns`` per row.

    Args:
        volume: ``(S, H, W)`` (any leading singleton dimensions), any intensity range.
        cam: ``(S, H, W)`` map in [0, 1] on the same grid.
        max_slices: how many slices to show.
        columns: tiles per row.
        alpha: heat-map weight.

    Returns:
        ``(rgb, slices)``: ``(rows * H, columns * W, 3)`` uint8 (unused tiles black) and the slices shown.
    """
    v = np.asarray(volume.detach().cpu() if torch.is_tensor(volume) else volume, dtype=np.float32)
    c = np.asarray(cam.detach().cpu() if torch.is_tensor(cam) else cam, dtype=np.float32)
    v, c = v.reshape(v.shape[-3:]), c.reshape(c.shape[-3:])
    if v.shape != c.shape:
        raise ValueError(f"volume {v.shape} and map {c.shape} must have the same shape.")
    idx = top_slices(c, max_slices)
    tiles = [overlay_cam(v[i], c[i], alpha) for i in idx]  # each tile's gray window is its own slice's
    cols = max(1, min(int(columns), len(tiles)))
    rows = -(-len(tiles) // cols)
    h, w = v.shape[1:]
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for n, t in enumerate(tiles):
        r, q = divmod(n, cols)
        out[r * h:(r + 1) * h, q * w:(q + 1) * w] = t
    return out, idx
