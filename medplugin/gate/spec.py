"""What a model was made for, declared as data (a YAML mapping in a bundle config), and the checks against it.

A config holds the spec as::

    scope:
      dicom:                       # DICOM header rules: keyword -> allowed values (case-insensitive)
        Modality: [CR, DX]         # a list: a missing element passes (many real files lack optional tags)
        BodyPartExamined: [CHEST]
        ViewPosition: [PA, AP]
        # {values: [...], required: true}: a missing or empty element is out of scope too
      image:                       # content rules, on the loaded image before intensity normalisation
        spatial_dims: 2            # a 3-D volume (more than one slice) given to a 2-D model is out of scope
        colour: false              # false: grayscale expected (RGB with equal channels passes); true: colour
        channels: [1, 3]           # optional: allowed channel counts
        intensity_range: [0, 255]  # expected range of the loaded values; outside by > range_tolerance: out
        range_tolerance: 0.05      # fraction of the range
        min_size: 32               # smallest spatial size in pixels

Each failed rule gives one reason naming the tag or property and the value, e.g. ``"ViewPosition is LL,
expected PA or AP"`` or ``"a colour image (channels differ by 41.3 on average), expected grayscale"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medplugin.io.image2d import IMAGE_SUFFIXES, NIFTI_SUFFIXES

__all__ = ["HeaderRule", "ScopeSpec", "check_file_shape", "check_header", "check_image", "read_header"]

_COLOUR_TOLERANCE = 0.02  # mean |R-G|, |G-B| above this fraction of the value range: a colour image


def _words(values: Sequence[str]) -> str:
    values = list(values)
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


@dataclass(frozen=True)
class HeaderRule:
    """One DICOM header rule: ``keyword`` must hold one of ``allowed`` (compared upper-case, stripped).

    Args:
        keyword: a DICOM keyword, e.g. ``ViewPosition``.
        allowed: the accepted values.
        required: a missing or empty element is out of scope (else it passes).
    """

    keyword: str
    allowed: tuple[str, ...]
    required: bool = False

    def __post_init__(self) -> None:
        from pydicom.datadict import tag_for_keyword

        if tag_for_keyword(self.keyword) is None:
            raise ValueError(f"scope.dicom: {self.keyword!r} is not a DICOM keyword (e.g. Modality, ViewPosition).")
        if not self.allowed:
            raise ValueError(f"scope.dicom.{self.keyword}: give at least one allowed value.")

    def check(self, header: Any) -> str | None:
        """The reason ``header`` breaks the rule, or ``None``."""
        value = header.get(self.keyword) if header is not None else None
        text = [] if value is None else [str(v) for v in value] if _is_multi(value) else [str(value)]
        text = [t.strip() for t in text if t.strip()]
        expected = f"expected {_words(self.allowed)}"
        if not text:
            return f"{self.keyword} is missing, {expected}" if self.required else None
        allowed = {a.upper() for a in self.allowed}
        if any(t.upper() in allowed for t in text):
            return None
        return f"{self.keyword} is {'/'.join(text)}, {expected}"


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


@dataclass(frozen=True)
class ScopeSpec:
    """A model's intended input, as :func:`ScopeSpec.from_config` reads it from a config (see the module)."""

    dicom: tuple[HeaderRule, ...] = ()
    spatial_dims: int | None = None
    colour: bool | None = None
    channels: tuple[int, ...] | None = None
    intensity_range: tuple[float, float] | None = None
    range_tolerance: float = 0.05
    min_size: int | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (None, 2, 3):
            raise ValueError(f"scope.image.spatial_dims must be 2 or 3, got {self.spatial_dims!r}.")
        if self.intensity_range is not None:
            lo, hi = self.intensity_range
            if not float(hi) > float(lo):
                raise ValueError(f"scope.image.intensity_range must be [low, high] with high > low, got "
                                 f"{list(self.intensity_range)!r}.")
        if not 0.0 <= float(self.range_tolerance) < 1.0:
            raise ValueError(f"scope.image.range_tolerance must be in [0, 1), got {self.range_tolerance!r}.")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> ScopeSpec:
        """Read ``{"dicom": {...}, "image": {...}}`` (both optional); unknown keys are errors, named."""
        config = dict(config or {})
        unknown = set(config) - {"dicom", "image"}
        if unknown:
            raise ValueError(f"scope: unknown keys {sorted(unknown)}; expected 'dicom' and 'image'.")
        rules = []
        for keyword, rule in (config.get("dicom") or {}).items():
            if isinstance(rule, Mapping):
                bad = set(rule) - {"values", "required"}
                if bad or "values" not in rule:
                    raise ValueError(f"scope.dicom.{keyword}: expected a list of values or {{values: [...], "
                                     f"required: bool}}, got {dict(rule)!r}.")
                values, required = rule["values"], bool(rule.get("required", False))
            else:
                values, required = rule, False
            values = [values] if isinstance(values, str) else list(values)
            rules.append(HeaderRule(str(keyword), tuple(str(v).strip() for v in values), required))
        image = dict(config.get("image") or {})
        known = {"spatial_dims", "colour", "channels", "intensity_range", "range_tolerance", "min_size"}
        if set(image) - known:
            raise ValueError(f"scope.image: unknown keys {sorted(set(image) - known)}; known: {sorted(known)}.")
        if "channels" in image and image["channels"] is not None:
            ch = image["channels"]
            image["channels"] = tuple(int(c) for c in ([ch] if isinstance(ch, int) else ch))
        if image.get("intensity_range") is not None:
            image["intensity_range"] = tuple(float(v) for v in image["intensity_range"])
        return cls(dicom=tuple(rules), **image)


def read_header(path: str | os.PathLike) -> Any:
    """The DICOM header of ``path`` (no pixels), or ``None`` for a file that is not DICOM. For a folder (a DICOM
    series, as the knee bundles take it) the header of its first DICOM file by name."""
    import pydicom

    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            header = read_header(os.path.join(path, name)) if os.path.isfile(os.path.join(path, name)) else None
            if header is not None:
                return header
        return None
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM (or unreadable: the reader reports that, not the gate)
        return None


def check_file_shape(path: str | os.PathLike, spec: ScopeSpec, header: Any = None) -> list[str]:
    """What a file's own header says of its dimensions, for an input whose image could not be loaded (e.g. a
    NIfTI volume or a multi-frame DICOM given to a 2-D model, which its 2-D reader refuses): a reason when it
    has more (or fewer) spatial dimensions than ``spec.spatial_dims``. NIfTI is read with nibabel (header
    only), DICOM from ``header`` (Number of Frames), MRNet ``.npy`` memory-mapped, JPEG/PNG/BMP/TIFF with PIL
    (header only; a multi-page TIFF is a stack); other files give no reason.
    """
    if spec.spatial_dims is None or not os.path.isfile(path):
        return []
    shape: tuple[int, ...] | None = None
    low = str(path).lower()
    try:
        if low.endswith(NIFTI_SUFFIXES):
            import nibabel as nib

            shape = tuple(int(s) for s in nib.load(str(path)).header.get_data_shape()[:3])
        elif low.endswith(".npy"):
            shape = tuple(int(s) for s in np.load(path, mmap_mode="r", allow_pickle=False).shape)
        elif header is not None and "Rows" in header:
            shape = (int(header.get("NumberOfFrames", 1) or 1), int(header.Rows), int(header.Columns))
        elif low.endswith(IMAGE_SUFFIXES):
            from PIL import Image

            with Image.open(path) as im:  # the header only: no pixels decoded
                shape = (int(getattr(im, "n_frames", 1) or 1), int(im.height), int(im.width))
    except Exception:  # noqa: BLE001 - an unreadable header: the reader's error row says why
        return []
    if shape is None:
        return []
    true_spatial = tuple(s for s in shape if s > 1)
    if len(true_spatial) != spec.spatial_dims and len(true_spatial) >= 2:
        return [_dims_reason(len(true_spatial), shape, spec.spatial_dims)]
    return []


def _dims_reason(dims: int, shape: tuple[int, ...], expected: int) -> str:
    kind = "volume" if dims == 3 else "image" if dims == 2 else "array"
    wanted = "a 2-D image" if expected == 2 else "a 3-D volume"
    return f"a {dims}-D {kind} of shape {shape}, expected {wanted}"


def check_header(header: Any, spec: ScopeSpec) -> list[str]:
    """Reasons why a DICOM header is outside ``spec`` (empty list: in scope). ``None`` (not DICOM) passes."""
    if header is None:
        return []
    return [r for r in (rule.check(header) for rule in spec.dicom) if r]


def check_image(image: Any, spec: ScopeSpec) -> list[str]:
    """Reasons why a loaded image is outside ``spec``'s content rules (empty list: in scope).

    Args:
        image: channel-first ``(C, *spatial)`` array or tensor (MONAI's layout after loading), before any
            intensity normalisation.
        spec: the rules.
    """
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    reasons: list[str] = []
    if arr.ndim < 2:
        return [f"an array of shape {arr.shape}, expected an image (channels first)"]
    channels, spatial = int(arr.shape[0]), tuple(int(s) for s in arr.shape[1:])
    true_spatial = tuple(s for s in spatial if s > 1)  # (H, W, 1) is a 2-D image
    wrong_dims = spec.spatial_dims is not None and len(true_spatial) != spec.spatial_dims and len(true_spatial) >= 2
    if wrong_dims:
        reasons.append(_dims_reason(len(true_spatial), spatial, spec.spatial_dims))
    if spec.channels is not None and channels not in spec.channels:
        reasons.append(f"{channels} channels, expected {_words([str(c) for c in spec.channels])}")
    values = arr.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        reasons.append(f"{int((~finite).sum())} NaN or infinite values")
        values = values[finite] if finite.any() else np.zeros(1)
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        reasons.append(f"a constant image (every value {lo:g})")
    if spec.colour is not None and hi > lo:
        colour, difference = _is_colour(arr, hi - lo)
        if colour and spec.colour is False:
            reasons.append(f"a colour image (channels differ by {difference:.1f} on average), expected grayscale")
        elif not colour and spec.colour is True:
            reasons.append("a grayscale image, expected a colour image")
    if spec.intensity_range is not None:
        a, b = spec.intensity_range
        tol = float(spec.range_tolerance) * (b - a)
        if lo < a - tol or hi > b + tol:
            reasons.append(f"intensity range {lo:g}..{hi:g} outside the expected {a:g}..{b:g}")
    if spec.min_size is not None and true_spatial and not wrong_dims and min(true_spatial) < int(spec.min_size):
        reasons.append(f"an image of {'x'.join(map(str, spatial))} pixels, smaller than {int(spec.min_size)}")
    return reasons


def _is_colour(arr: np.ndarray, value_range: float) -> tuple[bool, float]:
    """Whether the first three channels differ (a colour image), and their mean absolute difference."""
    if arr.shape[0] < 3:
        return False, 0.0
    rgb = arr[:3].astype(np.float32)
    difference = float((np.abs(rgb[0] - rgb[1]).mean() + np.abs(rgb[1] - rgb[2]).mean()) / 2)
    return difference > _COLOUR_TOLERANCE * value_range, difference
