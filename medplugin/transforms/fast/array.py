"""Array transforms of the fast path: uint8 images for the decode cache, batched augmentation on the device."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import NdarrayOrTensor
from monai.transforms import Randomizable, Transform
from monai.utils import TransformBackends

__all__ = ["BatchRandAugment", "CacheBoundary", "ToUint8"]


class ToUint8(Transform):
    """Round an image on the 0..255 scale to ``uint8`` (values outside 0..255 are clipped).

    A decoded and resized 2D image kept as ``uint8`` takes a quarter of the memory of ``float32``; the rounding
    moves a value by at most half a grey level (0.2% of the range), less than bfloat16's precision.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return ``img`` rounded and clipped to 0..255 as ``uint8`` (numpy in, numpy out; torch in, torch out)."""
        if isinstance(img, torch.Tensor):
            if img.dtype == torch.uint8:
                return img
            return torch.round(img).clamp_(0, 255).to(torch.uint8)
        arr = np.asarray(img)
        if arr.dtype == np.uint8:
            return arr
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


class CacheBoundary:
    """Marks where a cache stops in a ``Compose``: everything before it is computed once and kept.

    MONAI's ``CacheDataset`` and ``PersistentDataset`` cache the leading steps of a ``Compose`` up to the first
    random transform or the first step that is not a MONAI ``Transform``. This identity step deliberately is
    not a ``Transform``, so a preprocessing pipeline can put it right after the cheap-to-store result (a
    decoded, resized ``uint8`` image) and before the steps that turn it into ``float32``.
    """

    def __call__(self, data: Any) -> Any:
        """Return ``data`` unchanged."""
        return data

    def __repr__(self) -> str:
        return "CacheBoundary()"


class BatchRandAugment(Randomizable, Transform):
    """Random rotation, zoom, flips and intensity scale/shift of a whole batch ``(B, C, H, W)`` on its device.

    The same augmentation as :func:`medplugin.transforms.image_classification_augmentation`, drawn
    independently per image, but done for the batch at once after it reached the GPU (one ``grid_sample`` for
    the images that rotate or zoom), so data-loader workers only copy cached images. Rotation and zoom-out pad
    with zeros (the normalised mean). Parameters are drawn with ``self.R`` (seeded by ``set_random_state`` or
    MONAI's ``set_determinism``) on the CPU, so a run is reproducible whatever the device.

    Args:
        rotate_degrees: rotations uniformly in +-this many degrees.
        hflip: random left-right flips.
        vflip: random up-down flips.
        zoom: zoom range (above 1 magnifies).
        intensity: random scale ``x * (1 + u)`` and shift ``x + v`` with ``u, v`` uniform in +-this.
        prob: probability of each random step, per image.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, rotate_degrees: float = 10.0, hflip: bool = True, vflip: bool = False,
                 zoom: Sequence[float] | None = (0.9, 1.1), intensity: float = 0.1, prob: float = 0.5) -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"prob must be in [0, 1], got {prob!r}.")
        if zoom is not None and (len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]):
            raise ValueError(f"zoom must be (min, max) with 0 < min <= max, got {zoom!r}.")
        self.rotate = math.radians(float(rotate_degrees or 0.0))
        self.hflip, self.vflip = bool(hflip), bool(vflip)
        self.zoom = (1.0, 1.0) if zoom is None else (float(zoom[0]), float(zoom[1]))
        self.intensity = float(intensity or 0.0)
        self.prob = float(prob)
        self._params: dict[str, np.ndarray] | None = None

    def randomize(self, data: int) -> None:
        """Draw the parameters of a batch of ``data`` images."""
        n, p, R = int(data), self.prob, self.R
        self._params = {
            "angle": np.where(R.rand(n) < p, R.uniform(-self.rotate, self.rotate, n), 0.0)
            if self.rotate
            else np.zeros(n),
            "zoom": np.where(R.rand(n) < p, R.uniform(*self.zoom, n), 1.0) if self.zoom != (1.0, 1.0) else np.ones(n),
            "hflip": (R.rand(n) < p) if self.hflip else np.zeros(n, bool),
            "vflip": (R.rand(n) < p) if self.vflip else np.zeros(n, bool),
            "scale": np.where(R.rand(n) < p, R.uniform(-self.intensity, self.intensity, n), 0.0)
            if self.intensity
            else np.zeros(n),
            "shift": np.where(R.rand(n) < p, R.uniform(-self.intensity, self.intensity, n), 0.0)
            if self.intensity
            else np.zeros(n),
        }

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """Augment ``img`` ``(B, C, H, W)``; a new tensor on ``img``'s device and dtype is returned."""
        if not isinstance(img, torch.Tensor) or img.ndim != 4:
            raise ValueError(f"BatchRandAugment expects a torch tensor (B, C, H, W), got "
                             f"{type(img).__name__} of shape {tuple(getattr(img, 'shape', ()))}.")
        if randomize:
            self.randomize(img.shape[0])
        if self._params is None or len(self._params["angle"]) != img.shape[0]:
            raise RuntimeError("call randomize(batch_size) before calling with randomize=False.")
        prm, dev = self._params, img.device
        out = img.clone() if img.is_floating_point() else img.float()
        geo = (prm["angle"] != 0) | (prm["zoom"] != 1)
        flip_only = ~geo & (prm["hflip"] | prm["vflip"])
        for i in np.flatnonzero(flip_only):
            dims = [d for d, f in ((-1, prm["hflip"][i]), (-2, prm["vflip"][i])) if f]
            out[i] = torch.flip(out[i], dims)
        idx = np.flatnonzero(geo)
        if len(idx):
            h, w = out.shape[-2:]
            a, z = prm["angle"][idx], prm["zoom"][idx]
            fx = np.where(prm["hflip"][idx], -1.0, 1.0)
            fy = np.where(prm["vflip"][idx], -1.0, 1.0)
            cos, sin = np.cos(a) / z, -np.sin(a) / z  # MONAI's Rotate direction
            # output -> input coordinates in pixels: R(a)/z then flip; normalised coordinates scale x by w, y by h
            theta = np.zeros((len(idx), 2, 3))
            theta[:, 0, 0] = cos * fx
            theta[:, 0, 1] = -sin * fy * h / w
            theta[:, 1, 0] = sin * fx * w / h
            theta[:, 1, 1] = cos * fy
            theta_t = torch.as_tensor(
                theta, dtype=out.dtype if out.dtype != torch.float16 else torch.float32, device=dev
            )
            sel = torch.as_tensor(idx, device=dev)
            src = out.index_select(0, sel)
            grid = F.affine_grid(theta_t.to(src.dtype), list(src.shape), align_corners=False)
            out.index_copy_(
                0, sel, F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            )
        if self.intensity:
            shape = (-1,) + (1,) * (out.ndim - 1)
            scale = torch.as_tensor(1.0 + prm["scale"], dtype=out.dtype, device=dev).view(shape)
            shift = torch.as_tensor(prm["shift"], dtype=out.dtype, device=dev).view(shape)
            out = out * scale + shift
        return out
