"""Array transforms for lesion candidates on colour fundus photographs.

The chain follows the diabetic-retinopathy write-up: the fast radial symmetry transform (Loy & Zelinsky 2003,
:class:`medplugin.transforms.RadialSymmetry`) finds round dark (microaneurysms, haemorrhages) and bright
(exudates) spots, Tsallis entropy thresholding (Portes de Albuquerque et al. 2004) keeps the strong responses,
and the candidates are drawn onto the image or stacked as extra channels before a CNN (ResNet-50 in the
write-up). Images are channel-first (C, H, W) RGB, numpy or torch, on the 0-255 scale unless a ``value_range``
says otherwise; outputs have the input's type.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type
from scipy import ndimage as ndi

from medplugin.errors import BadInputError
from medplugin.transforms.intensity.array import RadialSymmetry, TsallisThreshold, fast_radial_symmetry
from medplugin.transforms.utils import as_mask, as_rgb, check_polarity, check_positive, default_radii

__all__ = ["LesionCandidates", "AnnotateCandidates", "estimate_disc_and_fovea"]


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
        self.min_distance = None if min_distance is None else check_positive("min_distance", min_distance, True)
        self.max_fovea_distance = (
            None if max_fovea_distance is None else check_positive("max_fovea_distance", max_fovea_distance)
        )
        self.disc_diameter = None if disc_diameter is None else check_positive("disc_diameter", disc_diameter)
        self.estimate_fovea = estimate_fovea
        self.polarity = check_polarity(polarity)
        if not isinstance(max_candidates, (int, np.integer)) or max_candidates < 1:
            raise ValueError(f"max_candidates must be an int >= 1, got {max_candidates!r}")
        self.max_candidates = int(max_candidates)

    def _one_polarity(
        self, gray: np.ndarray, mask: np.ndarray, inner: np.ndarray, radii: tuple[int, ...], pol: str
    ) -> np.ndarray:
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
        m = as_mask(mask, (h, w))
        if m is None:
            m = rgb.max(0) > 0
            if m.mean() < 0.05:
                m = np.ones((h, w), bool)
        if not m.any():
            raise BadInputError(None, "no fundus region found: the FOV mask is empty")
        radii = tuple(self.symmetry.radii or default_radii(min(h, w)))
        fov_d = 2.0 * np.sqrt(m.sum() / np.pi)
        dd = self.disc_diameter if self.disc_diameter is not None else fov_d / 6.0
        inner = ndi.distance_transform_edt(m) > max(radii) + 2
        gray = rgb[self.symmetry.channel]
        pols = ("dark", "bright") if self.polarity == "both" else (self.polarity,)
        cands = [self._one_polarity(gray, m, inner, radii, p) for p in pols]
        if (
            (fovea is None or disc is None)
            and self.estimate_fovea
            and (fovea is None and self.max_fovea_distance is not None or disc is None)
        ):
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
        self.thickness = None if thickness is None else check_positive("thickness", thickness)
        self.value_range = check_positive("value_range", value_range)

    def __call__(self, img: NdarrayOrTensor, candidates: NdarrayOrTensor) -> NdarrayOrTensor:
        """Annotate ``img`` (C, H, W) with ``candidates`` (N, 5) from :class:`LesionCandidates`."""
        rgb = as_rgb(img)
        c, *_ = convert_data_type(candidates, np.ndarray)
        c = np.asarray(c, np.float32)
        if c.size == 0:
            c = c.reshape(0, 5)
        if c.ndim != 2 or c.shape[1] < 4:
            raise ValueError(
                f"candidates must be an (N, 5) array [row, col, radius, polarity, score], got shape {c.shape}"
            )
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
