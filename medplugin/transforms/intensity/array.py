"""Array transforms of intensities: radiograph and MRI normalisation, Graham's fundus contrast, the fast radial
symmetry map and its Tsallis-entropy threshold.

All fundus transforms take channel-first (C, H, W) RGB images, numpy or torch, on the 0-255 scale unless a
``value_range`` says otherwise, and return the input's type (see :func:`medplugin.transforms.utils.as_rgb` for
gray and RGBA input). The lesion-candidate chain built on the symmetry map is in :mod:`medplugin.transforms.lesion`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.config import NdarrayOrTensor
from monai.transforms import NormalizeIntensity, ScaleIntensityRangePercentiles, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type
from scipy import ndimage as ndi

from medplugin.transforms.utils import (
    as_mask,
    as_rgb,
    check_polarity,
    check_positive,
    default_radii,
    normalized_blur,
)

__all__ = [
    "NORMALIZATIONS",
    "normalize_radiograph",
    "percentile_scaler",
    "GrahamContrast",
    "RadialSymmetry",
    "TsallisThreshold",
    "fast_radial_symmetry",
    "tsallis_threshold",
]

NORMALIZATIONS = ("zscore",)
"""Whole-image intensity normalisations a segmentation ``model.json`` may record (``normalization``)."""


def normalize_radiograph(img: NdarrayOrTensor, normalization: str = "zscore") -> NdarrayOrTensor:
    """The lung bundle's intensity normalisation: each image to zero mean and unit standard deviation.

    Radiographs from different sources (8-bit PNG, DICOM after its VOI LUT) differ in brightness and
    contrast, so each image is standardised by its own statistics (MONAI's ``NormalizeIntensity``).

    Args:
        img: the image, any shape.
        normalization: ``"zscore"`` (the only one so far).

    Raises:
        ValueError: an unknown normalisation.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    return NormalizeIntensity()(img)


def percentile_scaler(lower: float = 0.5, upper: float = 99.5) -> ScaleIntensityRangePercentiles:
    """The knee bundles' intensity normalisation: percentiles ``lower``/``upper`` of each volume to 0/1, clipped.

    MRI intensities have no absolute scale (MRNet's ``uint8``, scanner floats), so each volume is scaled by
    its own percentiles (MONAI's ``ScaleIntensityRangePercentiles``).
    """
    return ScaleIntensityRangePercentiles(lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)


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
        self.alpha = check_positive("alpha", alpha)
        self.offset = check_positive("offset", offset, allow_zero=True)
        self.sigma = None if sigma is None else check_positive("sigma", sigma)
        self.sigma_fraction = check_positive("sigma_fraction", sigma_fraction)
        self.value_range = check_positive("value_range", value_range)
        self.outside_value = float(outside_value)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Enhance ``img`` (C, H, W); ``mask`` (1, H, W) or (H, W) optional FOV mask. Returns float32 (3, H, W)."""
        rgb = as_rgb(img)
        m = as_mask(mask, rgb.shape[1:])
        sigma = self.sigma if self.sigma is not None else max(self.sigma_fraction * min(rgb.shape[1:]), 0.5)
        blur = normalized_blur(rgb, sigma, m)
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
        self.polarity = check_polarity(polarity)
        self.alpha = check_positive("alpha", alpha)
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.beta = float(beta)
        if channel not in (0, 1, 2):
            raise ValueError(f"channel must be 0, 1 or 2 (R, G, B), got {channel!r}")
        self.channel = channel

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Map of ``img`` (C, H, W); ``mask`` restricts the voting pixels. Returns (1, H, W) float32."""
        rgb = as_rgb(img)
        m = as_mask(mask, rgb.shape[1:])
        radii = self.radii or default_radii(min(rgb.shape[1:]))
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

    def __init__(
        self, q: float = 0.8, bins: int = 256, positive_only: bool = True, return_threshold: bool = True
    ) -> None:
        """Check and store the arguments (see the class docstring)."""
        q = check_positive("q", q)
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
            m = as_mask(mask, arr.shape[-2:])
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
