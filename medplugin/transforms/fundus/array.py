"""Array transforms for colour fundus photographs: FOV crop, Graham contrast, lesion candidates.

The lesion-candidate chain follows the diabetic-retinopathy write-up: the fast radial symmetry transform
(Loy & Zelinsky 2003) finds round dark (microaneurysms, haemorrhages) and bright (exudates) spots, Tsallis
entropy thresholding (Portes de Albuquerque et al. 2004) keeps the strong responses, and the candidates are
drawn onto the image or stacked as extra channels before a CNN (ResNet-50 in the write-up). Contrast
enhancement is Ben Graham's Kaggle Diabetic Retinopathy Detection 2015 preprocessing.

All transforms take channel-first (C, H, W) RGB images, numpy or torch, on the 0-255 scale unless a
``value_range`` says otherwise, and return the input's type. A 1-channel (grayscale) image is repeated to 3
channels; a 4-channel (RGBA) image drops alpha; any other shape raises :class:`~medplugin.errors.BadInputError`
(a ``ValueError``) naming the shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type
from scipy import ndimage as ndi

from medplugin.errors import BadInputError

__all__ = [
    "FundusFOVCrop",
    "GrahamContrast",
    "RadialSymmetry",
    "TsallisThreshold",
    "LesionCandidates",
    "AnnotateCandidates",
    "fast_radial_symmetry",
    "tsallis_threshold",
    "estimate_disc_and_fovea",
    "as_rgb",
]

logger = logging.getLogger(__name__)

_POLARITIES = ("dark", "bright", "both")


# ----------------------------------------------------------------------------------------------- helpers
def as_rgb(img: NdarrayOrTensor, name: str = "image") -> np.ndarray:
    """Return a float32 numpy (3, H, W) copy of a channel-first RGB image.

    A 1-channel image is repeated to 3 channels (grayscale fundus photographs then behave as gray RGB);
    a 4-channel image drops its alpha channel.

    Args:
        img: (C, H, W) numpy array or torch tensor.
        name: what to call the image in error messages.

    Raises:
        BadInputError: (a ``ValueError``) for other dimensions or channel counts, naming the shape.
    """
    arr, *_ = convert_data_type(img, np.ndarray)
    if arr.ndim != 3:
        raise BadInputError(None, f"{name} must be channel-first (C, H, W) with C in (1, 3, 4), got shape {tuple(arr.shape)}")
    c = arr.shape[0]
    if c == 1:
        arr = np.repeat(arr, 3, axis=0)
    elif c == 4:
        arr = arr[:3]
    elif c != 3:
        raise BadInputError(
            None, f"{name} must have 1 (gray), 3 (RGB) or 4 (RGBA) channels first, got shape {tuple(arr.shape)}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _as_mask(mask: NdarrayOrTensor | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    m, *_ = convert_data_type(mask, np.ndarray)
    m = np.asarray(m)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != tuple(shape):
        raise ValueError(f"mask must have shape (1, H, W) or (H, W) = {tuple(shape)}, got shape {tuple(np.shape(mask))}")
    return m > 0.5 if m.dtype != bool else m


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or (v < 0 if allow_zero else v <= 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _check_polarity(polarity: str) -> str:
    if polarity not in _POLARITIES:
        raise ValueError(f"polarity must be one of {_POLARITIES}, got {polarity!r}")
    return polarity


def _default_radii(size: int) -> tuple[int, ...]:
    """Radii for lesions at a given image side: (2, 3, 4, 6, 8) px at 256 px, scaled with the side."""
    s = size / 256.0
    return tuple(sorted({max(1, int(round(r * s))) for r in (2, 3, 4, 6, 8)}))


def _normalized_blur(img: np.ndarray, sigma: float, mask: np.ndarray | None) -> np.ndarray:
    """Gaussian blur of (C, H, W); inside a mask, a normalised convolution (no dark halo from outside)."""
    if mask is None:
        return ndi.gaussian_filter(img, sigma=(0, sigma, sigma), mode="reflect")
    m = mask.astype(np.float32)
    num = ndi.gaussian_filter(img * m[None], sigma=(0, sigma, sigma), mode="constant")
    den = ndi.gaussian_filter(m, sigma=sigma, mode="constant")
    return num / np.maximum(den, 1e-3)[None]


# ------------------------------------------------------------------------------------------ FOV crop
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
            raise BadInputError(None, f"no fundus region found: implausible FOV circle (row {cy:.0f}, col {cx:.0f}, radius {r:.0f})")
        # boundary pixels are the last pixels inside: the rim lies half a pixel further out
        return float(cy * step), float(cx * step), float((r + 0.5) * step)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor | tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Crop ``img`` (C, H, W) to its FOV; returns (3, S, S) float32 (and the mask if ``return_mask``)."""
        rgb = as_rgb(img)
        cy, cx, r = self.find_fov(rgb)
        _, h, w = rgb.shape
        side = max(int(np.ceil(2 * r)), 1)
        top, left = int(round(cy - side / 2.0 + 0.5)), int(round(cx - side / 2.0 + 0.5))
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


# ------------------------------------------------------------------------------------ Graham contrast
class GrahamContrast(Transform):
    """Ben Graham's local contrast normalisation (Kaggle Diabetic Retinopathy Detection 2015, winning entry).

    ``out = alpha * img - alpha * GaussianBlur(img, sigma) + offset``, clipped to ``[0, value_range]``. With a
    FOV mask the blur is a normalised convolution inside the mask (no bright halo at the rim) and the outside is
    set to ``outside_value``. Graham used alpha=4, offset=128 on 0-255 and sigma = (retina radius)/30; here
    ``sigma`` defaults to ``sigma_fraction`` times the smaller image side (the image side is the FOV diameter
    after :class:`FundusFOVCrop`).

    Args:
        alpha: contrast gain (> 0).
        offset: value added, in the units of ``value_range`` scaled from 0-255 (128 -> mid-gray).
        sigma: blur sigma in pixels; ``None`` uses ``sigma_fraction * min(H, W)``.
        sigma_fraction: see ``sigma``.
        value_range: the intensity scale of the input (255 for 8-bit images, 1 for [0, 1] images).
        outside_value: value written outside the mask, on the ``value_range`` scale.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
        alpha: float = 4.0,
        offset: float = 128.0,
        sigma: float | None = None,
        sigma_fraction: float = 1.0 / 30.0,
        value_range: float = 255.0,
        outside_value: float = 0.0,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        self.alpha = _check_positive("alpha", alpha)
        self.offset = _check_positive("offset", offset, allow_zero=True)
        self.sigma = None if sigma is None else _check_positive("sigma", sigma)
        self.sigma_fraction = _check_positive("sigma_fraction", sigma_fraction)
        self.value_range = _check_positive("value_range", value_range)
        self.outside_value = float(outside_value)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Enhance ``img`` (C, H, W); ``mask`` (1, H, W) or (H, W) optional FOV mask. Returns float32 (3, H, W)."""
        rgb = as_rgb(img)
        m = _as_mask(mask, rgb.shape[1:])
        sigma = self.sigma if self.sigma is not None else max(self.sigma_fraction * min(rgb.shape[1:]), 0.5)
        blur = _normalized_blur(rgb, sigma, m)
        out = self.alpha * (rgb - blur) + self.offset * self.value_range / 255.0
        np.clip(out, 0.0, self.value_range, out=out)
        if m is not None:
            out[:, ~m] = self.outside_value
        res, *_ = convert_to_dst_type(out, img, dtype=np.float32)
        return res


# ---------------------------------------------------------------------------------- radial symmetry
def fast_radial_symmetry(
    gray: np.ndarray,
    radii: Sequence[int],
    alpha: float = 2.0,
    beta: float = 0.1,
    polarity: str = "dark",
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Fast radial symmetry transform (Loy & Zelinsky 2003, IEEE TPAMI 25(8)), one map per radius.

    For each radius ``n`` every pixel ``p`` with gradient magnitude above the threshold votes at
    ``p +- round(n * g / |g|)``: the positively affected pixel (bright centre) and the negatively affected pixel
    (dark centre). The orientation projection ``O_n`` (vote counts, clipped to ``k_n``: 8 for n=1, 9.9
    otherwise) and the magnitude projection ``M_n`` give ``F_n = M_n / k_n * (|O_n| / k_n) ** alpha``, smoothed
    by a Gaussian of sigma ``0.25 n``.

    Args:
        gray: (H, W) float image.
        radii: radii in pixels (>= 1).
        alpha: radial strictness; higher suppresses non-radial (e.g. linear, vessel) symmetry.
        beta: gradient threshold as a fraction of the 99.5th percentile of the gradient magnitude (inside the
            mask when given); Loy & Zelinsky's beta ignores small gradients.
        polarity: ``"dark"``: only negatively affected votes, dark centres give positive values;
            ``"bright"``: only positively affected votes, bright centres positive; ``"both"``: signed map,
            bright positive and dark negative.
        mask: optional (H, W) bool; only gradients inside it vote.

    Returns:
        (len(radii), H, W) float32 stack ``S_n``.
    """
    g = np.asarray(gray, np.float32)
    gy = ndi.sobel(g, 0) / 8.0
    gx = ndi.sobel(g, 1) / 8.0
    mag = np.hypot(gx, gy)
    ref = mag[mask] if mask is not None and mask.any() else mag
    thr = beta * float(np.percentile(ref, 99.5)) if ref.size else 0.0
    sel = mag > max(thr, 1e-12)
    if mask is not None:
        sel &= mask
    ys, xs = np.nonzero(sel)
    m = mag[ys, xs]
    uy, ux = gy[ys, xs] / m, gx[ys, xs] / m
    h, w = g.shape
    out = np.zeros((len(radii), h, w), np.float32)
    for i, n in enumerate(radii):
        k = 8.0 if n == 1 else 9.9
        o = np.zeros(h * w, np.float64)
        mm = np.zeros(h * w, np.float64)
        dy, dx = np.rint(uy * n).astype(np.int64), np.rint(ux * n).astype(np.int64)
        signs = {"bright": (1,), "dark": (-1,), "both": (1, -1)}[polarity]
        for sgn in signs:
            py, px = ys + sgn * dy, xs + sgn * dx
            ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
            idx = py[ok] * w + px[ok]
            o += sgn * np.bincount(idx, minlength=h * w)
            mm += sgn * np.bincount(idx, weights=m[ok], minlength=h * w)
        o = np.clip(o, -k, k)
        f = (mm / k * (np.abs(o) / k) ** alpha).reshape(h, w)
        out[i] = ndi.gaussian_filter(f, 0.25 * n) if n >= 2 else f
    if polarity == "dark":
        out = -out
    return out


class RadialSymmetry(Transform):
    """Fast radial symmetry map of a fundus image (Loy & Zelinsky 2003, "Fast radial symmetry for detecting
    points of interest", IEEE TPAMI 25(8):959-973).

    The mean of :func:`fast_radial_symmetry` over ``radii`` on one channel (green by default, where
    microaneurysms, haemorrhages and exudates have the most contrast). For ``polarity="dark"`` round dark spots
    give strong positive maxima, for ``"bright"`` round bright spots do; ``"both"`` is signed (bright > 0,
    dark < 0).

    Args:
        radii: radii in pixels; ``None``: (2, 3, 4, 6, 8) px scaled by min(H, W)/256.
        polarity: ``"dark"``, ``"bright"`` or ``"both"``.
        alpha: radial strictness (> 0); 2 as recommended by Loy & Zelinsky.
        beta: gradient threshold in [0, 1) as a fraction of the 99.5th percentile gradient magnitude.
        channel: channel index of the RGB image used (0 red, 1 green, 2 blue).
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
        radii: Sequence[int] | None = None,
        polarity: str = "dark",
        alpha: float = 2.0,
        beta: float = 0.1,
        channel: int = 1,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        if radii is not None:
            radii = tuple(radii)
            if not radii or any(not isinstance(r, (int, np.integer)) or r < 1 for r in radii):
                raise ValueError(f"radii must be a non-empty sequence of ints >= 1, got {radii!r}")
        self.radii = radii
        self.polarity = _check_polarity(polarity)
        self.alpha = _check_positive("alpha", alpha)
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.beta = float(beta)
        if channel not in (0, 1, 2):
            raise ValueError(f"channel must be 0, 1 or 2 (R, G, B), got {channel!r}")
        self.channel = channel

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Map of ``img`` (C, H, W); ``mask`` restricts the voting pixels. Returns (1, H, W) float32."""
        rgb = as_rgb(img)
        m = _as_mask(mask, rgb.shape[1:])
        radii = self.radii or _default_radii(min(rgb.shape[1:]))
        stack = fast_radial_symmetry(rgb[self.channel], radii, self.alpha, self.beta, self.polarity, m)
        res, *_ = convert_to_dst_type(stack.mean(0, keepdims=True), img, dtype=np.float32)
        return res


# --------------------------------------------------------------------------------- Tsallis threshold
def tsallis_threshold(values: np.ndarray, q: float = 0.8, bins: int = 256) -> float:
    """Threshold maximising the Tsallis entropy of the two classes (Portes de Albuquerque et al. 2004, "Image
    thresholding using Tsallis entropy", Pattern Recognition Letters 25(9):1059-1065).

    ``S(t) = S_A + S_B + (1 - q) S_A S_B`` with ``S_A = (1 - sum_{i<=t} (p_i / P_A) ** q) / (q - 1)`` and
    ``S_B`` likewise above ``t``; vectorised with cumulative sums over a ``bins``-bin histogram.

    Args:
        values: the values to threshold (any shape).
        q: entropic index (> 0, != 1); q < 1 (sub-extensive) suits long-tailed maps like the symmetry map.
        bins: histogram bins (>= 2).

    Returns:
        the threshold (upper edge of the last bin of the lower class); the minimum when all values are equal.
    """
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    pq = p**q
    pa = np.cumsum(p)[:-1]
    pb = 1.0 - pa
    sa_q = np.cumsum(pq)[:-1]
    sb_q = pq.sum() - sa_q
    with np.errstate(divide="ignore", invalid="ignore"):
        s_a = (1.0 - sa_q / pa**q) / (q - 1.0)
        s_b = (1.0 - sb_q / pb**q) / (q - 1.0)
        s = s_a + s_b + (1.0 - q) * s_a * s_b
    s[(pa <= 0) | (pb <= 0) | ~np.isfinite(s)] = -np.inf
    if not np.isfinite(s).any():
        return lo
    return float(edges[int(np.argmax(s)) + 1])


class TsallisThreshold(Transform):
    """Tsallis-entropy threshold of a map, returning a probability-like candidate map (Portes de Albuquerque
    et al. 2004, Pattern Recognition Letters 25(9):1059-1065).

    Values above the threshold ``t`` become ``(v - t) / (max - t)`` in (0, 1], everything else 0. The histogram
    uses the strictly positive values (inside the mask when given) when ``positive_only``, since the symmetry
    maps are zero almost everywhere and the zeros would swamp the histogram.

    Args:
        q: entropic index (> 0, != 1). The default 0.8 (sub-extensive) puts the threshold further into the long
            tail of the symmetry maps than q >= 1 does (Shannon at q -> 1).
        bins: histogram bins (>= 2).
        positive_only: build the histogram from values > 0 only.
        return_threshold: return ``(map, threshold)`` instead of the map alone.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, q: float = 0.8, bins: int = 256, positive_only: bool = True, return_threshold: bool = True) -> None:
        """Check and store the arguments (see the class docstring)."""
        q = _check_positive("q", q)
        if abs(q - 1.0) < 1e-6:
            raise ValueError(f"q must differ from 1 (q=1 is Shannon entropy), got {q!r}")
        if not isinstance(bins, (int, np.integer)) or bins < 2:
            raise ValueError(f"bins must be an int >= 2, got {bins!r}")
        self.q, self.bins = q, int(bins)
        self.positive_only = positive_only
        self.return_threshold = return_threshold

    def __call__(
        self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None
    ) -> NdarrayOrTensor | tuple[NdarrayOrTensor, float]:
        """Threshold ``img`` (any shape, e.g. (1, H, W)); ``mask`` limits the histogram (and the output)."""
        arr, *_ = convert_data_type(img, np.ndarray)
        arr = np.asarray(arr, np.float32)
        m = None
        if mask is not None:
            m = _as_mask(mask, arr.shape[-2:])
            m = np.broadcast_to(m, arr.shape)
        vals = arr[m] if m is not None else arr.ravel()
        if self.positive_only:
            vals = vals[vals > 0]
        t = tsallis_threshold(vals, self.q, self.bins)
        if vals.size:
            vmax = float(vals.max())
        else:
            vmax = t
        out = np.zeros_like(arr)
        if vmax > t:
            above = arr > t
            if m is not None:
                above &= m
            out[above] = (arr[above] - t) / (vmax - t)
            np.clip(out, 0.0, 1.0, out=out)
        res, *_ = convert_to_dst_type(out, img, dtype=np.float32)
        return (res, float(t)) if self.return_threshold else res


# ---------------------------------------------------------------------------------- disc and fovea
def estimate_disc_and_fovea(
    rgb: np.ndarray, mask: np.ndarray | None = None, disc_diameter: float | None = None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Estimate the optic disc and the fovea of an RGB fundus image.

    The disc is the brightest region of the mean-of-channels image smoothed at a quarter disc diameter. The
    fovea is the darkest region smoothed at half a disc diameter, relative to its surroundings smoothed at two
    disc diameters (uneven illumination), on the ring 2-3 disc diameters from the disc,
    within about 30 degrees of the direction from the disc to the FOV centre (the macula lies temporal of the
    disc, towards the middle of a standard 45-degree photograph), and at least one disc diameter inside the FOV.

    Args:
        rgb: (3, H, W) float array.
        mask: (H, W) bool FOV mask; ``None``: the whole image.
        disc_diameter: pixels; ``None``: 1/6 of the FOV diameter.

    Returns:
        ``((disc_row, disc_col), (fovea_row, fovea_col))``.
    """
    _, h, w = rgb.shape
    m = np.ones((h, w), bool) if mask is None else mask
    area = float(m.sum())
    if area == 0:
        raise BadInputError(None, "no fundus region found: the FOV mask is empty")
    dd = disc_diameter if disc_diameter is not None else 2.0 * np.sqrt(area / np.pi) / 6.0
    step = max(1, int(round(min(h, w) / 128)))  # work at about 128 px: smooth maps need no more
    lum = rgb.mean(0)[::step, ::step]
    ms = m[::step, ::step]
    dds = dd / step
    inner = ndi.distance_transform_edt(ms) > 0.5 * dds
    if not inner.any():
        inner = ms
    mf = ms.astype(np.float32)

    def smooth(x: np.ndarray, sig: float) -> np.ndarray:
        return ndi.gaussian_filter(x * mf, sig) / np.maximum(ndi.gaussian_filter(mf, sig), 1e-3)

    sd = np.where(inner, smooth(lum, max(dds / 4, 0.5)), -np.inf)
    dr, dc = np.unravel_index(int(np.argmax(sd)), sd.shape)
    yy, xx = np.mgrid[0 : sd.shape[0], 0 : sd.shape[1]]
    cy, cx = np.mean(np.nonzero(ms), axis=1)
    ring = np.hypot(yy - dr, xx - dc)
    deep = ndi.distance_transform_edt(ms) > 1.0 * dds
    cand = deep & (ring >= 2.0 * dds) & (ring <= 3.0 * dds)
    to_c = np.array([cy - dr, cx - dc])
    if np.hypot(*to_c) > 0.25 * dds:
        to_c /= np.hypot(*to_c)
        cosang = ((yy - dr) * to_c[0] + (xx - dc) * to_c[1]) / np.maximum(ring, 1e-6)
        cand_dir = cand & (cosang >= 0.85)
        if cand_dir.any():
            cand = cand_dir
    if not cand.any():
        cand = inner
    # darkness relative to the surroundings (2 disc diameters), so that the dark rim of an unevenly lit
    # photograph does not win over the macula
    local = smooth(lum, max(dds / 2, 0.5)) / np.maximum(smooth(lum, max(2.0 * dds, 1.0)), 1e-3)
    sf = np.where(cand, local, np.inf)
    fr, fc = np.unravel_index(int(np.argmin(sf)), sf.shape)
    return (float(dr * step), float(dc * step)), (float(fr * step), float(fc * step))


# ------------------------------------------------------------------------------------ lesion candidates
class LesionCandidates(Transform):
    """Dark (microaneurysm, haemorrhage) and bright (exudate) lesion candidates of a fundus image.

    For each polarity: the fast radial symmetry map (Loy & Zelinsky 2003) of the green channel, voting only
    from inside the FOV; its Tsallis-entropy threshold (Portes de Albuquerque et al. 2004) inside the FOV eroded
    by the largest radius (the rim gives spurious symmetry); the connected regions above the threshold, each
    regrouped into one candidate at its maximum; candidates closer than ``min_distance`` to a stronger one are
    dropped, as are those on the optic disc and (when the fovea is given or ``estimate_fovea``) those farther
    than ``max_fovea_distance`` disc diameters from the fovea. The radius of a candidate is the radius whose
    symmetry response is largest there; the score is the Tsallis candidate-map value (0..1).

    Args:
        radii: radii in pixels; ``None``: (2, 3, 4, 6, 8) px scaled by min(H, W)/256.
        alpha: radial strictness of the symmetry transform.
        beta: gradient threshold of the symmetry transform (fraction of the 99.5th percentile magnitude).
        q: Tsallis entropic index.
        min_distance: minimum distance in pixels between candidates; ``None``: the largest radius.
        max_fovea_distance: in disc diameters; ``None`` disables the fovea filter.
        disc_diameter: pixels; ``None``: 1/6 of the FOV diameter (from the mask, else the smaller image side).
        estimate_fovea: estimate the disc and fovea (:func:`estimate_disc_and_fovea`) when no fovea is given.
        polarity: ``"both"``, ``"dark"`` or ``"bright"``: which candidates to look for.
        channel: image channel used (1: green).
        max_candidates: keep at most this many per polarity (highest scores).

    Returns (from ``__call__``): (N, 5) float32 rows ``[row, col, radius, polarity, score]`` with polarity -1
    (dark) or +1 (bright), sorted by decreasing score, of the input's type.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
        radii: Sequence[int] | None = None,
        alpha: float = 2.0,
        beta: float = 0.1,
        q: float = 0.8,
        min_distance: float | None = None,
        max_fovea_distance: float | None = 2.0,
        disc_diameter: float | None = None,
        estimate_fovea: bool = False,
        polarity: str = "both",
        channel: int = 1,
        max_candidates: int = 200,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        self.symmetry = RadialSymmetry(radii=radii, polarity="dark", alpha=alpha, beta=beta, channel=channel)
        self.tsallis = TsallisThreshold(q=q, return_threshold=True)
        self.min_distance = None if min_distance is None else _check_positive("min_distance", min_distance, True)
        self.max_fovea_distance = None if max_fovea_distance is None else _check_positive("max_fovea_distance", max_fovea_distance)
        self.disc_diameter = None if disc_diameter is None else _check_positive("disc_diameter", disc_diameter)
        self.estimate_fovea = estimate_fovea
        self.polarity = _check_polarity(polarity)
        if not isinstance(max_candidates, (int, np.integer)) or max_candidates < 1:
            raise ValueError(f"max_candidates must be an int >= 1, got {max_candidates!r}")
        self.max_candidates = int(max_candidates)

    def _one_polarity(self, gray: np.ndarray, mask: np.ndarray, inner: np.ndarray, radii: tuple[int, ...], pol: str) -> np.ndarray:
        sym = self.symmetry
        stack = fast_radial_symmetry(gray, radii, sym.alpha, sym.beta, pol, mask)
        smap = stack.mean(0)
        prob, t = self.tsallis(smap[None], inner[None])
        prob = prob[0]
        above = prob > 0
        lab, n = ndi.label(above, structure=np.ones((3, 3)))
        if n == 0:
            return np.zeros((0, 5), np.float32)
        idx = np.arange(1, n + 1)
        pos = np.asarray(ndi.maximum_position(smap, lab, idx), np.int64).reshape(-1, 2)
        score = prob[pos[:, 0], pos[:, 1]]
        rad = np.asarray(radii, np.float32)[np.argmax(stack[:, pos[:, 0], pos[:, 1]], axis=0)]
        sign = -1.0 if pol == "dark" else 1.0
        return np.column_stack([pos.astype(np.float32), rad, np.full(n, sign, np.float32), score]).astype(np.float32)

    def __call__(
        self,
        img: NdarrayOrTensor,
        mask: NdarrayOrTensor | None = None,
        fovea: Sequence[float] | None = None,
        disc: Sequence[float] | None = None,
    ) -> NdarrayOrTensor:
        """Find candidates in ``img`` (C, H, W).

        Args:
            img: RGB image (gray/RGBA converted, see :func:`as_rgb`).
            mask: (1, H, W) or (H, W) FOV mask; ``None``: pixels above 0 in any channel, or all if none are 0.
            fovea: (row, col) of the fovea; enables the fovea filter.
            disc: (row, col) of the optic disc centre; candidates within one disc radius are dropped.
        """
        rgb = as_rgb(img)
        h, w = rgb.shape[1:]
        m = _as_mask(mask, (h, w))
        if m is None:
            m = rgb.max(0) > 0
            if m.mean() < 0.05:
                m = np.ones((h, w), bool)
        if not m.any():
            raise BadInputError(None, "no fundus region found: the FOV mask is empty")
        radii = tuple(self.symmetry.radii or _default_radii(min(h, w)))
        fov_d = 2.0 * np.sqrt(m.sum() / np.pi)
        dd = self.disc_diameter if self.disc_diameter is not None else fov_d / 6.0
        inner = ndi.distance_transform_edt(m) > max(radii) + 2
        gray = rgb[self.symmetry.channel]
        pols = ("dark", "bright") if self.polarity == "both" else (self.polarity,)
        cands = [self._one_polarity(gray, m, inner, radii, p) for p in pols]
        if (fovea is None or disc is None) and self.estimate_fovea and (fovea is None and self.max_fovea_distance is not None or disc is None):
            est_disc, est_fovea = estimate_disc_and_fovea(rgb, m, dd)
            disc = disc if disc is not None else est_disc
            fovea = fovea if fovea is not None else est_fovea
        min_d = self.min_distance if self.min_distance is not None else float(max(radii))
        kept = []
        for c in cands:
            if disc is not None and len(c):
                c = c[np.hypot(c[:, 0] - disc[0], c[:, 1] - disc[1]) > dd / 2.0 + c[:, 2]]
            if fovea is not None and self.max_fovea_distance is not None and len(c):
                c = c[np.hypot(c[:, 0] - fovea[0], c[:, 1] - fovea[1]) <= self.max_fovea_distance * dd]
            kept.append(self._suppress(c, min_d)[: self.max_candidates])
        out = np.concatenate(kept, 0) if kept else np.zeros((0, 5), np.float32)
        out = out[np.argsort(-out[:, 4], kind="stable")] if len(out) else out.reshape(0, 5)
        res, *_ = convert_to_dst_type(out.astype(np.float32), img, dtype=np.float32)
        return res

    @staticmethod
    def _suppress(c: np.ndarray, min_distance: float) -> np.ndarray:
        """Greedy non-maximum suppression: keep a candidate unless a stronger kept one is closer than min_distance."""
        if len(c) == 0:
            return c.reshape(0, 5)
        c = c[np.argsort(-c[:, 4], kind="stable")]
        if min_distance <= 0:
            return c
        keep = np.ones(len(c), bool)
        d = np.hypot(c[:, None, 0] - c[None, :, 0], c[:, None, 1] - c[None, :, 1])
        for i in range(len(c)):
            if keep[i]:
                close = d[i] < min_distance
                close[: i + 1] = False
                keep &= ~close
        return c[keep]


# ---------------------------------------------------------------------------------------- annotation
class AnnotateCandidates(Transform):
    """Show lesion candidates to a CNN: draw them on the image or stack them as extra channels.

    ``mode="draw"`` draws a circle (radius + 2 px, line width ``thickness``) around each candidate on the RGB
    image, dark candidates in ``dark_color`` and bright ones in ``bright_color`` -> 3 channels.
    ``mode="channels"`` appends two maps, dark then bright, of Gaussian blobs (sigma = candidate radius, peak
    ``value_range``, combined by maximum) -> 5 channels.

    Args:
        mode: ``"draw"`` or ``"channels"``.
        dark_color: RGB of dark candidates as fractions of ``value_range`` (default cyan).
        bright_color: RGB of bright candidates as fractions of ``value_range`` (default blue).
        thickness: circle line width in pixels; ``None``: max(1, min(H, W) / 256).
        value_range: the image's intensity scale.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
        mode: str = "draw",
        dark_color: Sequence[float] = (0.0, 1.0, 1.0),
        bright_color: Sequence[float] = (0.0, 0.0, 1.0),
        thickness: float | None = None,
        value_range: float = 255.0,
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        if mode not in ("draw", "channels"):
            raise ValueError(f"mode must be 'draw' or 'channels', got {mode!r}")
        for name, col in (("dark_color", dark_color), ("bright_color", bright_color)):
            if len(tuple(col)) != 3 or any(not 0.0 <= float(v) <= 1.0 for v in col):
                raise ValueError(f"{name} must be 3 fractions in [0, 1], got {col!r}")
        self.mode = mode
        self.dark_color = np.asarray(dark_color, np.float32)
        self.bright_color = np.asarray(bright_color, np.float32)
        self.thickness = None if thickness is None else _check_positive("thickness", thickness)
        self.value_range = _check_positive("value_range", value_range)

    def __call__(self, img: NdarrayOrTensor, candidates: NdarrayOrTensor) -> NdarrayOrTensor:
        """Annotate ``img`` (C, H, W) with ``candidates`` (N, 5) from :class:`LesionCandidates`."""
        rgb = as_rgb(img)
        c, *_ = convert_data_type(candidates, np.ndarray)
        c = np.asarray(c, np.float32)
        if c.size == 0:
            c = c.reshape(0, 5)
        if c.ndim != 2 or c.shape[1] < 4:
            raise ValueError(f"candidates must be an (N, 5) array [row, col, radius, polarity, score], got shape {c.shape}")
        h, w = rgb.shape[1:]
        if self.mode == "draw":
            thick = self.thickness if self.thickness is not None else max(1.0, min(h, w) / 256.0)
            out = rgb.copy()
            for r0, c0, rad, pol in c[:, :4]:
                rr = rad + 2.0 + thick
                sl_r = slice(max(int(r0 - rr - 1), 0), min(int(r0 + rr + 2), h))
                sl_c = slice(max(int(c0 - rr - 1), 0), min(int(c0 + rr + 2), w))
                yy, xx = np.ogrid[sl_r, sl_c]
                ring = np.abs(np.hypot(yy - r0, xx - c0) - (rad + 2.0)) <= thick / 2.0
                col = (self.dark_color if pol < 0 else self.bright_color) * self.value_range
                out[:, sl_r, sl_c][:, ring] = col[:, None]
        else:
            maps = np.zeros((2, h, w), np.float32)
            for r0, c0, rad, pol in c[:, :4]:
                sig = max(float(rad), 0.5)
                rr = 3.0 * sig
                sl_r = slice(max(int(r0 - rr), 0), min(int(r0 + rr + 2), h))
                sl_c = slice(max(int(c0 - rr), 0), min(int(c0 + rr + 2), w))
                yy, xx = np.ogrid[sl_r, sl_c]
                blob = np.exp(-((yy - r0) ** 2 + (xx - c0) ** 2) / (2 * sig**2)) * self.value_range
                k = 0 if pol < 0 else 1
                np.maximum(maps[k, sl_r, sl_c], blob, out=maps[k, sl_r, sl_c])
            out = np.concatenate([rgb, maps], 0)
        res, *_ = convert_to_dst_type(out, img, dtype=np.float32)
        return res
