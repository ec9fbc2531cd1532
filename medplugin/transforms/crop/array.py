"""Array transforms that crop: to the bounding box of a mask (2D or 3D, invertible), to a fundus field of view.

:class:`CropToMask` is the one crop-to-mask of the package: the lung crop of the chest X-ray classifier
(segment-then-classify, as in Liu et al. 2019, "SDFN: Segmentation-based deep fusion network for thoracic
disease classification in chest X-ray images", Computerized Medical Imaging and Graphics) and the ACL-region
crop of the knee classifier (Liu et al. 2019, "Fully automated diagnosis of anterior cruciate ligament tears on
knee MR images by using deep learning", Radiology: AI) both use it. It is MONAI's ``CropForeground`` with the
box taken from a separate mask and widened by a margin relative to the box, in voxels or in millimetres, so
MONAI's ``Invertd`` puts a map computed on the crop back on the uncropped grid.

:class:`FundusFOVCrop` finds the circular field of view of a colour fundus photograph (Graham's Kaggle DR
2015 preprocessing starts from it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import CropForeground, Transform
from monai.utils import TransformBackends, convert_to_dst_type
from scipy import ndimage as ndi

from medplugin.errors import BadInputError
from medplugin.transforms.utils import as_rgb, mask_bounding_box, number_word, spatial_mask, voxel_spacing

__all__ = ["CropToMask", "FundusFOVCrop", "EMPTY_MASK_MODES", "MARGIN_UNITS"]

logger = logging.getLogger(__name__)

EMPTY_MASK_MODES = ("full", "center", "raise")
"""What :class:`CropToMask` does with an empty mask: keep the whole image, take a central box, or raise."""

MARGIN_UNITS = ("voxel", "mm", "fraction")
"""Units of :class:`CropToMask`'s margin: voxels (pixels), millimetres, or a fraction of the box's own size."""


class CropToMask(CropForeground):
    """Crop a 2D or 3D image to the bounding box of a mask, widened by a margin; invertible (MONAI's ``Invertd``).

    The box is the mask's end-exclusive bounding box widened on each side of each spatial axis by ``margin``:
    voxels (``margin_unit="voxel"``, rounded up), millimetres (``"mm"``: ``ceil(margin / spacing)`` voxels, the
    spacing from ``spacing`` or the image's affine) or a fraction of the box's own size on that axis
    (``"fraction"``: 0.05 adds 5% of the box's height above and below and 5% of its width left and right,
    rounded up). It is then grown to at least ``min_size`` around its centre and clipped to the image, so the
    crop never pads and always contains every mask voxel. The crop is MONAI's ``CropForeground.crop_pad``: a
    ``MetaTensor`` gets its affine shifted to the crop (the same voxels map to the same millimetres) and the crop
    recorded, so ``inverse`` (or ``Invertd`` on the preprocessing) pads a map of the crop back to the full grid
    with zeros. The last box is kept in ``self.last_box`` as ``{"start", "end", "empty"}`` (input voxels).

    Input: channel-first ``(C, *spatial)`` as in MONAI, numpy or torch (returned as given); with
    ``spatial_dims`` set, an image without a channel axis is accepted too (not invertible then). The mask has the
    image's spatial shape, with or without channels (a voxel counts if any channel is > 0).

    Empty mask (nothing segmented), by ``empty``: ``"full"`` (default) keeps the whole image and logs a warning,
    ``"center"`` takes a box of ``min_size`` (or the whole image) around the centre, ``"raise"`` raises
    :class:`~medplugin.errors.BadInputError` naming the image's file when it is known.

    Args:
        margin: added on each side: one number for all spatial axes or one per axis, >= 0.
        margin_unit: ``"voxel"``, ``"mm"`` or ``"fraction"``.
        min_size: optional least box size in voxels, one number or one per axis.
        empty: ``"full"``, ``"center"`` or ``"raise"``.
        spacing: voxel size in mm (one number or one per axis) for ``margin_unit="mm"``; default the affine's.
        spatial_dims: 2 or 3; default the length of a per-axis ``margin``, ``min_size`` or ``spacing``, else
            ``img.ndim - 1`` (channel-first input).
        mask_name: what the mask is, in messages (``"the lung mask is empty"``).

    Raises:
        ValueError: bad arguments, an image with another number of axes, or a mask of another spatial shape.
    """

    backend = CropForeground.backend

    def __init__(
        self,
        margin: Sequence[float] | float = 0,
        margin_unit: str = "voxel",
        min_size: Sequence[int] | int | None = None,
        empty: str = "full",
        spacing: Sequence[float] | float | None = None,
        spatial_dims: int | None = None,
        mask_name: str = "ROI",
    ) -> None:
        super().__init__(margin=0, allow_smaller=True)
        if margin_unit not in MARGIN_UNITS:
            raise ValueError(f"margin_unit must be 'voxel' or 'mm', got {margin_unit!r} (or 'fraction': a share of "
                             "the box's size).")
        if empty not in EMPTY_MASK_MODES:
            raise ValueError(f"empty must be one of {EMPTY_MASK_MODES}, got {empty!r}.")
        if spatial_dims is not None and spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2, 3 or None, got {spatial_dims!r}.")
        if spatial_dims is None:  # a per-axis margin, min_size or spacing says how many spatial axes there are
            sizes = [np.size(v) for v in (margin, min_size, spacing) if v is not None and np.size(v) in (2, 3)]
            spatial_dims = sizes[0] if sizes else None
        self.spatial_dims = spatial_dims
        self.margin_unit = margin_unit
        self.margin_values = self._check_margin(margin, spatial_dims)
        self.min_size = None if min_size is None else self._check_min_size(min_size, spatial_dims)
        self.empty = empty
        self.spacing = spacing
        self.mask_name = mask_name
        self.last_box: dict | None = None

    def _check_margin(self, margin, n: int | None) -> np.ndarray:
        m = np.asarray(margin, dtype=np.float64).ravel()
        ok = m.size == 1 or (m.size == n if n is not None else m.size in (2, 3))
        if not ok or not np.all(np.isfinite(m)) or np.any(m < 0):
            hint = " (fractions of the box)" if self.margin_unit == "fraction" else ""
            raise ValueError(f"margin must be one or {number_word(n) if n else 'one per axis'} numbers >= 0{hint}, "
                             f"got {margin!r}.")
        return m

    @staticmethod
    def _check_min_size(min_size, n: int | None) -> np.ndarray:
        ms = np.asarray(min_size).ravel()
        ok = ms.size == 1 or (ms.size == n if n is not None else ms.size in (2, 3))
        if not ok or np.any(ms < 1) or np.any(ms != np.round(ms)):
            raise ValueError(f"min_size must be one or {number_word(n) if n else 'one per axis'} positive integers, "
                             f"got {min_size!r}.")
        return ms.astype(int)

    def _dims(self, img: NdarrayOrTensor) -> tuple[int, bool]:
        """``(spatial_dims, has_channel)`` of ``img``."""
        sd = self.spatial_dims if self.spatial_dims is not None else img.ndim - 1
        if sd not in (2, 3) or img.ndim not in (sd, sd + 1):
            axes = "(slices, H, W)" if sd == 3 else "(H, W)"
            raise ValueError(f"image must be {axes} or channel-first (C, {axes[1:-1]}), got shape {tuple(img.shape)}.")
        return sd, img.ndim == sd + 1

    def margin_voxels(self, img: NdarrayOrTensor, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """The margin in voxels per spatial axis for the box ``start:end`` of ``img``."""
        sd = len(start)
        m = np.broadcast_to(self.margin_values, (sd,)) if self.margin_values.size == 1 else self.margin_values
        if m.size != sd:
            raise ValueError(f"margin must be one or {number_word(sd)} numbers >= 0, got {m.tolist()!r}.")
        if self.margin_unit == "voxel":
            return np.ceil(m).astype(int)
        if self.margin_unit == "fraction":
            return np.ceil(m * (end - start) - 1e-9).astype(int)
        return np.ceil(m / voxel_spacing(img, self.spacing, sd) - 1e-9).astype(int)

    def compute_box(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> dict:
        """The crop box for ``img``: ``{"start", "end", "empty"}`` in voxels (end-exclusive).

        Raises:
            BadInputError: empty mask with ``empty="raise"`` (naming the image's file when known).
        """
        sd, _ = self._dims(img)
        shape = np.asarray(img.shape[-sd:], dtype=int)
        m = spatial_mask(mask, sd, tuple(shape.tolist()), "volume" if sd == 3 else "image")
        box = mask_bounding_box(m)
        min_size = None
        if self.min_size is not None:
            min_size = np.broadcast_to(self.min_size, (sd,)) if self.min_size.size == 1 else self.min_size
        if box is None:
            name = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
            if self.empty == "raise":
                raise BadInputError(name, f"the {self.mask_name} mask is empty: nothing to crop to")
            if self.empty == "center" and min_size is not None:
                size = np.minimum(min_size, shape)
                start = (shape - size) // 2
                return {"start": start.tolist(), "end": (start + size).tolist(), "empty": True}
            logger.warning("%s: empty %s mask, keeping the whole image", name or "image", self.mask_name)
            return {"start": [0] * sd, "end": shape.tolist(), "empty": True}
        start, end = np.asarray(box[0]), np.asarray(box[1])
        margin = self.margin_voxels(img, start, end)
        start, end = start - margin, end + margin
        if min_size is not None:
            grow = np.maximum(min_size - (end - start), 0)
            start, end = start - grow // 2, end + grow - grow // 2
            # shift a box that sticks out of the image back inside, so it keeps min_size where possible
            shift = np.where(start < 0, -start, 0) - np.where(end > shape, end - shape, 0)
            start, end = start + shift, end + shift
        start, end = np.clip(start, 0, shape), np.clip(end, 0, shape)
        return {"start": start.tolist(), "end": end.tolist(), "empty": False}

    def crop(self, img: NdarrayOrTensor, box: dict) -> NdarrayOrTensor:
        """Cut ``img`` to ``box`` (from :meth:`compute_box`) with ``CropForeground.crop_pad``; same type as ``img``."""
        _, has_channel = self._dims(img)
        x = img if has_channel else img[None]
        out = self.crop_pad(x, np.asarray(box["start"]), np.asarray(box["end"]))
        out = out if has_channel else out[0]
        if not isinstance(img, MetaTensor):
            out, *_ = convert_to_dst_type(out, img)
        return out

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> NdarrayOrTensor:  # type: ignore[override]
        """Crop ``img`` to ``mask``'s box widened by the margin."""
        box = self.compute_box(img, mask)
        self.last_box = box
        return self.crop(img, box)


class FundusFOVCrop(Transform):
    """Find the circular field of view (FOV) of a fundus photograph, crop to it, zero the outside, resize.

    The red channel, subsampled to about 256 px and smoothed, is thresholded at ``threshold`` of the way from
    the background level (median of the four corners, or the 2nd percentile if lower) to the 99th percentile;
    the largest connected component with holes filled is the retina. A circle is fitted to the component's
    boundary by least squares (Kasa fit), leaving out boundary points on the image border (FOVs truncated at the
    top and bottom) and iteratively trimming points more than 2.5 robust standard deviations off the circle
    (notches, dark uneven rims). The square around the circle (zero-padded where it leaves the image) is resized
    to ``spatial_size`` with antialiasing, keeping the aspect, and everything outside the circle is set to 0.

    Args:
        spatial_size: output side in pixels (the output is square).
        threshold: fraction (0, 1) of the background-to-retina range used as the foreground threshold.
        mask_scale: radius of the kept disc relative to the fitted radius, in (0, 1].
        return_mask: return ``(image, mask)`` with mask (1, S, S) float32 of the input's type.
        min_area_fraction: a retina smaller than this fraction of the image is "no fundus found".
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
        spatial_size: int = 512,
        threshold: float = 0.15,
        mask_scale: float = 1.0,
        return_mask: bool = False,
        min_area_fraction: float = 0.05,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        if isinstance(spatial_size, Sequence) and not isinstance(spatial_size, str):
            sz = tuple(spatial_size)
            if len(sz) != 2 or sz[0] != sz[1]:
                raise ValueError(f"spatial_size must be an int or a square (S, S), got {spatial_size!r}")
            spatial_size = sz[0]
        if not isinstance(spatial_size, (int, np.integer)) or spatial_size < 8:
            raise ValueError(f"spatial_size must be an int >= 8, got {spatial_size!r}")
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        if not 0.0 < float(mask_scale) <= 1.0:
            raise ValueError(f"mask_scale must be in (0, 1], got {mask_scale!r}")
        if not 0.0 < float(min_area_fraction) < 1.0:
            raise ValueError(f"min_area_fraction must be in (0, 1), got {min_area_fraction!r}")
        self.spatial_size = int(spatial_size)
        self.threshold = float(threshold)
        self.mask_scale = float(mask_scale)
        self.return_mask = return_mask
        self.min_area_fraction = float(min_area_fraction)

    def find_fov(self, img: NdarrayOrTensor) -> tuple[float, float, float]:
        """Locate the FOV circle.

        Args:
            img: (C, H, W) RGB image.

        Returns:
            ``(row, col, radius)`` of the circle in input pixels.

        Raises:
            BadInputError: when no fundus region is found.
        """
        rgb = as_rgb(img)
        h0, w0 = rgb.shape[1:]
        step = max(1, int(round(max(h0, w0) / 256)))
        red = rgb[0, ::step, ::step]
        h, w = red.shape
        sm = ndi.gaussian_filter(red, 1.5)
        k = max(2, min(h, w) // 16)
        corners = np.concatenate([sm[:k, :k].ravel(), sm[:k, -k:].ravel(), sm[-k:, :k].ravel(), sm[-k:, -k:].ravel()])
        bg = min(float(np.median(corners)), float(np.percentile(sm, 2)))
        hi = float(np.percentile(sm, 99))
        if hi - bg <= 1e-6 * max(abs(hi), 1.0):
            raise BadInputError(None, f"no fundus region found: the image has no contrast (shape {tuple(rgb.shape)})")
        fg = sm > bg + self.threshold * (hi - bg)
        lab, n = ndi.label(fg)
        if n == 0:
            raise BadInputError(None, "no fundus region found: nothing above the background level")
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        fg = ndi.binary_fill_holes(lab == int(np.argmax(sizes)))
        if fg.sum() < self.min_area_fraction * h * w:
            raise BadInputError(
                None,
                f"no fundus region found: the largest bright region covers {fg.mean():.1%} of the image "
                f"(< {self.min_area_fraction:.0%})",
            )
        edge = fg & ~ndi.binary_erosion(fg)
        edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = False
        ys, xs = np.nonzero(edge)
        if len(ys) < 8:
            raise BadInputError(None, "no fundus region found: the retina has no usable circular rim")
        ys, xs = ys.astype(np.float64), xs.astype(np.float64)
        keep = np.ones(len(ys), bool)
        cy = cx = r = 0.0
        for _ in range(8):
            a = np.stack([xs[keep], ys[keep], np.ones(int(keep.sum()))], 1)
            b = xs[keep] ** 2 + ys[keep] ** 2
            sol, *_ = np.linalg.lstsq(a, b, rcond=None)
            cx, cy = sol[0] / 2, sol[1] / 2
            r = float(np.sqrt(max(sol[2] + cx**2 + cy**2, 0.0)))
            res = np.abs(np.hypot(xs - cx, ys - cy) - r)
            mad = 1.4826 * np.median(res[keep])
            new_keep = res <= max(2.5 * mad, 1.5)
            if new_keep.sum() < 8 or np.array_equal(new_keep, keep):
                break
            keep = new_keep
        if not (r > 0.1 * min(h, w) and -r < cy < h + r and -r < cx < w + r):
            raise BadInputError(
                None, f"no fundus region found: implausible FOV circle (row {cy:.0f}, col {cx:.0f}, radius {r:.0f})"
            )
        # boundary pixels are the last pixels inside: the rim lies half a pixel further out
        return float(cy * step), float(cx * step), float((r + 0.5) * step)

    @staticmethod
    def crop_square(cy: float, cx: float, r: float) -> tuple[int, int, int]:
        """``(top, left, side)`` in input pixels of the square cropped around the FOV circle ``(cy, cx, r)``; the
        crop is resized from ``side`` to ``spatial_size``, so input pixel ``(y, x)`` lands on output pixel
        ``((y - top + 0.5) * S / side - 0.5, (x - left + 0.5) * S / side - 0.5)`` (pixel centres)."""
        side = max(int(np.ceil(2 * r)), 1)
        return int(round(cy - side / 2.0 + 0.5)), int(round(cx - side / 2.0 + 0.5)), side

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor | tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Crop ``img`` (C, H, W) to its FOV; returns (3, S, S) float32 (and the mask if ``return_mask``)."""
        rgb = as_rgb(img)
        cy, cx, r = self.find_fov(rgb)
        _, h, w = rgb.shape
        top, left, side = self.crop_square(cy, cx, r)
        crop = np.zeros((3, side, side), np.float32)
        r0, r1 = max(top, 0), min(top + side, h)
        c0, c1 = max(left, 0), min(left + side, w)
        if r1 > r0 and c1 > c0:
            crop[:, r0 - top : r1 - top, c0 - left : c1 - left] = rgb[:, r0:r1, c0:c1]
        s = self.spatial_size
        t = torch.from_numpy(crop)[None]
        if side != s:
            t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False, antialias=side > s)
        out = t[0].numpy()
        # circle in output pixels (centre of the crop, radius scaled)
        ccy = (cy - top + 0.5) * s / side - 0.5
        ccx = (cx - left + 0.5) * s / side - 0.5
        yy, xx = np.ogrid[0:s, 0:s]
        mask = ((yy - ccy) ** 2 + (xx - ccx) ** 2) <= (r * self.mask_scale * s / side) ** 2
        out = out * mask[None]
        res, *_ = convert_to_dst_type(out, img, dtype=np.float32)
        if self.return_mask:
            m, *_ = convert_to_dst_type(mask[None].astype(np.float32), img, dtype=np.float32)
            return res, m
        return res

