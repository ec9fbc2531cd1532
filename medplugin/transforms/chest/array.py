"""Array transforms for chest radiographs: segment the lung fields with a trained U-Net, crop to them.

Images are channel-first ``(C, H, W)`` as elsewhere in MONAI (a ``(H, W)`` array without a channel is accepted
and keeps its shape). Cropping a radiograph to the lungs before classification follows the two-stage
pipelines of e.g. Liu et al. 2019 ("SDFN: Segmentation-based deep fusion network for thoracic disease
classification in chest X-ray images", Computerized Medical Imaging and Graphics) and Rajaraman et al. 2019
("Visualizing and explaining deep learning predictions for pneumonia detection in pediatric chest
radiographs"): :class:`SegmentLungs` runs the ``lung_xray_segmentation`` bundle's U-Net (Ronneberger et al.
2015) and :class:`LungCrop` cuts the image to the mask's bounding box plus a relative margin.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity, Resize, SpatialCrop, Transform
from monai.utils import TransformBackends, convert_to_dst_type
from scipy import ndimage

from medplugin.errors import BadInputError

__all__ = [
    "LoadLungMask",
    "LungCrop",
    "SegmentLungs",
    "EMPTY_MASK_MODES",
    "LUNG_SEG_NORMALIZATIONS",
    "LUNG_RESIZE",
    "lung_bounding_box",
    "clean_lung_mask",
    "normalize_radiograph",
]

logger = logging.getLogger(__name__)

EMPTY_MASK_MODES = ("full", "raise")
"""What :class:`LungCrop` does with an empty mask: keep the whole image (with a warning), or raise."""

LUNG_SEG_NORMALIZATIONS = ("zscore",)
"""Intensity normalisations :class:`SegmentLungs` knows (``model.json`` ``normalization``)."""

LUNG_RESIZE = {"mode": "bilinear", "anti_aliasing": True}
"""How radiographs are resized to the lung U-Net's input (MONAI ``Resize`` arguments), in training and in
:class:`SegmentLungs`."""


# ----------------------------------------------------------------------------------------------- helpers
def _spatial_mask(mask: NdarrayOrTensor, spatial_shape: Sequence[int] | None = None) -> np.ndarray:
    """Boolean ``(H, W)`` mask from ``(H, W)`` or channel-first ``(C, H, W)`` (a pixel counts if any channel > 0)."""
    m = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if m.ndim == 3:
        m = (m > 0).any(axis=0)
    elif m.ndim != 2:
        raise ValueError(f"mask must be (H, W) or channel-first (C, H, W), got shape {tuple(m.shape)}.")
    m = m > 0
    if spatial_shape is not None and tuple(m.shape) != tuple(int(s) for s in spatial_shape):
        raise ValueError(f"mask's spatial shape {tuple(m.shape)} differs from the image's {tuple(spatial_shape)}.")
    return m


def lung_bounding_box(mask: NdarrayOrTensor) -> dict | None:
    """The bounding box of the non-zero pixels of a 2D mask, or ``None`` when the mask is empty.

    Args:
        mask: ``(H, W)`` or channel-first ``(C, H, W)`` (a pixel counts if any channel is > 0).

    Returns:
        ``{"x", "y", "width", "height"}`` (x to the right, y down, in pixels; the box covers columns
        ``x .. x + width - 1`` and rows ``y .. y + height - 1``), ``"start"``/``"end"`` as ``[row, col]``
        (end-exclusive) and ``"area_fraction"``, the share of the image's pixels in the mask.
    """
    m = _spatial_mask(mask)
    if not m.any():
        return None
    rows = np.nonzero(m.any(axis=1))[0]
    cols = np.nonzero(m.any(axis=0))[0]
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return {
        "x": x0,
        "y": y0,
        "width": x1 - x0,
        "height": y1 - y0,
        "start": [y0, x0],
        "end": [y1, x1],
        "area_fraction": round(float(m.mean()), 6),
    }


def clean_lung_mask(mask: np.ndarray, keep_components: int | None = 2, fill_holes: bool = True) -> np.ndarray:
    """Keep the ``keep_components`` largest 8-connected foreground regions (two lungs) and fill their holes.

    Args:
        mask: ``(H, W)`` integer mask (> 0 is lung).
        keep_components: how many of the largest regions to keep (``None``: all).
        fill_holes: fill holes inside each kept region.

    Returns:
        a ``uint8`` 0/1 mask of the same shape.
    """
    m = np.asarray(mask) > 0
    if keep_components is not None and m.any():
        labels, n = ndimage.label(m, structure=np.ones((3, 3), bool))
        if n > keep_components:
            sizes = np.bincount(labels.ravel())[1:]
            keep = np.argsort(sizes)[::-1][: int(keep_components)] + 1
            m = np.isin(labels, keep)
    if fill_holes and m.any():
        m = ndimage.binary_fill_holes(m)
    return m.astype(np.uint8)


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
    if normalization not in LUNG_SEG_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {LUNG_SEG_NORMALIZATIONS}, got {normalization!r}.")
    return NormalizeIntensity()(img)


def _margins(margin: Sequence[float] | float) -> np.ndarray:
    m = np.asarray(margin, dtype=np.float64)
    if m.size not in (1, 2):
        raise ValueError(f"margin must be one or two numbers >= 0 (fractions of the box), got {margin!r}.")
    m = np.broadcast_to(m.ravel(), (2,)).copy()
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError(f"margin must be one or two numbers >= 0 (fractions of the box), got {margin!r}.")
    return m


# ----------------------------------------------------------------------------------------------- loading
class LoadLungMask(Transform):
    """Load a lung mask from one file, or the union of several (e.g. Montgomery's left and right lung masks).

    Each file is read with :func:`medplugin.io.image2d.read_image_2d` (PNG, JPEG, BMP, TIFF, DICOM; colour is
    converted to gray) and binarised: a pixel is lung when its value is > 0 in a lossless file, or > 127 in a
    JPEG (whose compression leaves faint non-zero values around the edges). The result is a ``MetaTensor``
    ``(1, H, W)`` float32 of 0/1 whose meta names the first file.

    Raises:
        BadInputError: a file that cannot be read, or masks of different sizes, naming the file.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, filenames: str | os.PathLike | Sequence[str | os.PathLike]) -> MetaTensor:
        """Read ``filenames`` (one path or a list of paths) and return their union."""
        from medplugin.io.image2d import read_image_2d

        paths = [os.fspath(filenames)] if isinstance(filenames, (str, os.PathLike)) else [os.fspath(f) for f in filenames]
        if not paths:
            raise ValueError("no mask file given.")
        union = None
        for path in paths:
            arr, _ = read_image_2d(path, channels=1)
            cut = 127.0 if Path(path).suffix.lower() in (".jpg", ".jpeg") else 0.0
            m = arr > cut
            if union is None:
                union = m
            elif m.shape != union.shape:
                raise BadInputError(path, f"mask size {m.shape[2]}x{m.shape[1]} differs from {paths[0]}'s "
                                          f"{union.shape[2]}x{union.shape[1]}")
            else:
                union |= m
        meta = {"filename_or_obj": paths[0], "original_shape": tuple(union.shape[1:]), "mask_files": paths}
        return MetaTensor(torch.as_tensor(union, dtype=torch.float32), meta=meta)


# ----------------------------------------------------------------------------------------------- cropping
class LungCrop(Transform):
    """Crop a 2D image to the bounding box of a (lung) mask, widened by a margin relative to the box.

    The box is the mask's end-exclusive bounding box, widened on each side by ``margin`` times its own height
    (rows) and width (columns), rounded up to whole pixels, then clipped to the image: the crop never pads and
    always contains every mask pixel. Works on channel-first ``(C, H, W)`` or ``(H, W)`` images, numpy or
    torch; a ``MetaTensor`` keeps its meta and gets its affine shifted to the crop (MONAI's ``SpatialCrop``).
    The mask is ``(H, W)`` or ``(C, H, W)`` with the image's spatial size (a pixel counts if any channel is
    > 0). The last box is kept in ``self.last_box`` as ``{"start": [row, col], "end": [row, col], "empty"}``.

    Empty mask (the segmentation found no lung), by ``empty``: ``"full"`` (default) returns the image
    unchanged and logs a warning; ``"raise"`` raises :class:`~medplugin.errors.BadInputError` naming the
    image's file when it is known.

    Args:
        margin: fraction of the box's size added on each side: one number, or ``(rows, columns)``.
            0.05 adds 5% of the box height above and below and 5% of its width left and right.
        empty: ``"full"`` or ``"raise"``, as above.

    Raises:
        ValueError: bad arguments, an image that is not 2D (+ channel), or a mask of another spatial size.
    """

    backend = SpatialCrop.backend

    def __init__(self, margin: Sequence[float] | float = 0.05, empty: str = "full") -> None:
        if empty not in EMPTY_MASK_MODES:
            raise ValueError(f"empty must be one of {EMPTY_MASK_MODES}, got {empty!r}.")
        self.margin = _margins(margin)
        self.empty = empty
        self.last_box: dict | None = None

    def compute_box(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> dict:
        """The crop box for ``img``: ``{"start": [row, col], "end": [row, col], "empty": bool}`` (end-exclusive).

        Raises:
            BadInputError: empty mask with ``empty="raise"``.
        """
        if img.ndim not in (2, 3):
            raise ValueError(f"image must be (H, W) or channel-first (C, H, W), got shape {tuple(img.shape)}.")
        shape = np.asarray(img.shape[-2:], dtype=int)
        box = lung_bounding_box(_spatial_mask(mask, tuple(shape.tolist())))
        if box is None:
            name = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
            if self.empty == "raise":
                raise BadInputError(name, "the lung mask is empty: nothing to crop to")
            logger.warning("%s: empty lung mask, keeping the whole image", name or "image")
            return {"start": [0, 0], "end": shape.tolist(), "empty": True}
        start, end = np.asarray(box["start"]), np.asarray(box["end"])
        grow = np.ceil(self.margin * (end - start) - 1e-9).astype(int)
        start, end = np.clip(start - grow, 0, shape), np.clip(end + grow, 0, shape)
        return {"start": start.tolist(), "end": end.tolist(), "empty": False}

    def crop(self, img: NdarrayOrTensor, box: dict) -> NdarrayOrTensor:
        """Cut ``img`` (channel-first or not) to ``box`` from :meth:`compute_box`."""
        cropper = SpatialCrop(roi_start=box["start"], roi_end=box["end"])
        if img.ndim == 2:
            return cropper(img[None])[0]
        return cropper(img)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        """Crop ``img`` to ``mask``'s box widened by the margin; returns the same type as ``img``."""
        box = self.compute_box(img, mask)
        self.last_box = box
        out = self.crop(img, box)
        if not isinstance(img, MetaTensor):
            out, *_ = convert_to_dst_type(out, img)
        return out


# ----------------------------------------------------------------------------------------------- segmentation
class SegmentLungs(Transform):
    """Segment both lung fields of a chest radiograph with the ``lung_xray_segmentation`` bundle's U-Net.

    Reads ``model.pt`` (a state dict, ``torch.load(weights_only=True)``) and ``model.json`` beside it (written
    by the bundle's training: ``arch``, ``in_channels``, ``class_names``, ``image_size``, ``normalization``,
    ``network``), then per image: converts colour to grayscale (BT.601 luma), resizes to the recorded
    ``image_size`` (bilinear with anti-aliasing, as the bundle's preprocessing), normalises intensities
    (:func:`normalize_radiograph`), runs the network, resizes the class probabilities back to the image's own
    size (bilinear), takes the argmax and keeps the two largest regions with their holes filled
    (:func:`clean_lung_mask`). The mask is ``uint8`` 0/1 (numpy) or ``torch.uint8`` (torch) with the input's
    layout: ``(1, H, W)`` for a channel-first input, ``(H, W)`` for ``(H, W)``; a ``MetaTensor`` input gives a
    ``MetaTensor`` with a copy of its meta.

    Intensities: any scale works (each image is standardised), e.g. the 0..255 of
    :class:`medplugin.transforms.LoadImage2d`. The network is loaded once, on first use; the transform pickles
    into DataLoader workers without it, and each worker loads its own copy.

    Args:
        model_path: the segmentation bundle's ``model.pt`` (``model.json`` must be beside it).
        device: where to run the network: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``, or
            ``"auto"`` (CUDA when available).
        keep_components: largest regions kept (2: the lungs; ``None``: all).
        fill_holes: fill holes inside the kept regions.

    Raises:
        BadInputError: (on first use) no ``model.pt`` or ``model.json``, a ``model.json`` the network cannot be
            rebuilt from, or weights that do not fit it; each names the file.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        keep_components: int | None = 2,
        fill_holes: bool = True,
    ) -> None:
        if keep_components is not None and (isinstance(keep_components, bool) or int(keep_components) < 1):
            raise ValueError(f"keep_components must be None or an int >= 1, got {keep_components!r}.")
        self.model_path = os.fspath(model_path)
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.keep_components = None if keep_components is None else int(keep_components)
        self.fill_holes = bool(fill_holes)
        self._network: torch.nn.Module | None = None
        self.meta: dict | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_network"] = None  # workers load their own copy
        return state

    def load(self) -> torch.nn.Module:
        """Load (once) and return the network in eval mode; ``self.meta`` then holds ``model.json``."""
        if self._network is not None:
            return self._network
        from medplugin.networks.pretrained import load_trained_model
        from medplugin.networks.segmentation import lung_unet_from_meta

        def build(meta: dict) -> torch.nn.Module:
            network = lung_unet_from_meta(meta)
            self._image_size(meta)
            if meta.get("normalization", "zscore") not in LUNG_SEG_NORMALIZATIONS:
                raise ValueError(f"unknown normalization {meta.get('normalization')!r}")
            return network

        network, meta = load_trained_model(self.model_path, build, "lung segmentation", "lung_xray_segmentation",
                                           errors=(ValueError, TypeError, KeyError))
        self.meta = meta
        self._network = network.to(self.device).eval()
        return self._network

    @staticmethod
    def _image_size(meta: dict) -> list[int]:
        size = meta["image_size"]
        size = [int(size)] * 2 if np.ndim(size) == 0 else [int(v) for v in size]
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image_size must be one or two positive ints, got {meta['image_size']!r}")
        return size

    def probabilities(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Lung probability ``(H, W)`` (float32, CPU) of ``img`` at its own size; used by :meth:`__call__`."""
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[0] not in (1, 3)):
            raise ValueError(f"image must be (H, W) or channel-first (1 or 3, H, W), got shape {tuple(img.shape)}.")
        network = self.load()
        meta = self.meta or {}
        x = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img).detach().to("cpu", torch.float32)
        if x.ndim == 2:
            x = x[None]
        if x.shape[0] == 3:
            x = 0.299 * x[0:1] + 0.587 * x[1:2] + 0.114 * x[2:3]
        in_ch = int(meta.get("in_channels", 1))
        if in_ch != 1:
            x = x.repeat(in_ch, 1, 1)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        x = Resize(self._image_size(meta), **LUNG_RESIZE)(x)
        x = normalize_radiograph(torch.as_tensor(x), meta.get("normalization", "zscore"))
        x = torch.as_tensor(x, dtype=torch.float32)[None].to(self.device)
        with torch.no_grad():
            prob = torch.softmax(network(x).float(), dim=1)
            prob = torch.nn.functional.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
        return prob[0, 1:].sum(0).cpu()

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return the lung mask of ``img`` (``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``) at its own size."""
        prob = self.probabilities(img)
        mask = clean_lung_mask((prob > 0.5).numpy(), self.keep_components, self.fill_holes)
        out_t = torch.as_tensor(mask)
        if img.ndim == 3:
            out_t = out_t[None]
        if isinstance(img, MetaTensor):
            return MetaTensor(out_t, meta={**img.meta, "affine": img.affine.clone()})
        out, *_ = convert_to_dst_type(out_t, img, dtype=torch.uint8 if torch.is_tensor(img) else np.uint8)
        return out
