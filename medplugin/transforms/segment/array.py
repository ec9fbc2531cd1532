"""Segment an image with a segmentation bundle's trained network (2D or 3D), and clean the mask with MONAI.

One transform serves both bundles whose model another bundle uses: ``lung_xray_segmentation`` (a 2D U-Net,
Ronneberger et al. 2015, run on the whole radiograph resized to its training size; the chest X-ray classifier's
lung crop) and ``knee_mri_segmentation`` (a 3D U-Net, Cicek et al. 2016, run by sliding window at the volume's
own resolution; the knee classifier's ACL-region crop). What differs between them is read from the
``model.json`` the bundle's training writes beside ``model.pt``: the architecture, the input size
(``image_size``) or patch size (``roi_size``), and the intensity normalisation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import FillHoles, KeepLargestConnectedComponent, Resize, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from medplugin.errors import BadInputError
from medplugin.transforms.intensity.array import NORMALIZATIONS, normalize_radiograph, percentile_scaler

__all__ = ["SegmentWithModel", "clean_mask", "segmentation_network_from_meta", "RESIZE_2D", "SEGMENTATION_BUNDLES"]

logger = logging.getLogger(__name__)

RESIZE_2D = {"mode": "bilinear", "anti_aliasing": True}
"""How a whole-image (2D) segmentation model's input is resized (MONAI ``Resize`` arguments), in the lung
bundle's training preprocessing and in :class:`SegmentWithModel`."""

SEGMENTATION_BUNDLES = {"lung_unet": "lung_xray_segmentation", "knee_unet3d": "knee_mri_segmentation"}
"""The ``arch`` a ``model.json`` records -> the bundle that trains it."""


def segmentation_network_from_meta(meta: dict) -> tuple[torch.nn.Module, int]:
    """Rebuild the network a segmentation bundle's ``model.json`` describes: ``(network, spatial_dims)``.

    Raises:
        ValueError: an ``arch`` no bundle here trains, or a ``model.json`` the network cannot be rebuilt from.
    """
    from medplugin.networks.segmentation import lung_unet_from_meta
    from medplugin.networks.unet3d import unet3d_from_meta

    builders = {"lung_unet": (lung_unet_from_meta, 2), "knee_unet3d": (unet3d_from_meta, 3)}
    arch = meta.get("arch")
    if arch not in builders:
        known = " or ".join(repr(a) for a in sorted(builders))
        raise ValueError(f"model.json describes arch {arch!r}; only {known} can be rebuilt here.")
    build, spatial_dims = builders[arch]
    return build(meta), spatial_dims


def clean_mask(mask: NdarrayOrTensor, keep_components: int | None = 1, fill_holes: bool = True) -> NdarrayOrTensor:
    """Keep the ``keep_components`` largest connected foreground regions and fill their holes (MONAI's
    ``KeepLargestConnectedComponent`` with full connectivity, all labels > 0 as one foreground, and ``FillHoles``
    with background connectivity 1, which fills every enclosed hole as ``scipy.ndimage.binary_fill_holes`` does).

    Args:
        mask: label map, channel-first ``(1, *spatial)`` (label values are kept).
        keep_components: how many of the largest regions to keep (``None``: all).
        fill_holes: fill holes inside the kept regions.

    Returns:
        the cleaned label map, of ``mask``'s type and shape.
    """
    out = mask
    if keep_components is not None:
        out = KeepLargestConnectedComponent(is_onehot=False, independent=False, num_components=int(keep_components))(
            out
        )
    if fill_holes:
        out = FillHoles(connectivity=1)(out)
    out, *_ = convert_to_dst_type(out, mask)
    return out


class SegmentWithModel(Transform):
    """Segment a 2D or 3D image with a segmentation bundle's trained network and clean the mask.

    Reads ``model.pt`` (a state dict, ``torch.load(weights_only=True)``) and ``model.json`` beside it, written
    by the bundle's training (:data:`SEGMENTATION_BUNDLES`), then per image:

    - a whole-image model (``model.json`` without ``roi_size``, e.g. the lung U-Net): colour is converted to gray
      (BT.601 luma), the image resized to the recorded ``image_size`` (:data:`RESIZE_2D`) and normalised
      (``normalization``: ``zscore``, :func:`~medplugin.transforms.normalize_radiograph`); the class
      probabilities are resized back to the image's own size (bilinear);
    - a patch model (``roi_size``, e.g. the knee 3D U-Net): the volume is scaled by its own intensity percentiles
      (``intensity_percentiles``, :func:`~medplugin.transforms.percentile_scaler`) and run by MONAI's
      sliding-window inference (Gaussian weighting) at its own resolution (apply it before any resizing);

    then the argmax label map is cleaned with :func:`clean_mask` (``keep_components`` largest regions, holes
    filled). The mask is ``uint8`` (numpy) or ``torch.uint8`` (torch) with the input's layout: ``(1, *spatial)``
    for a channel-first input, ``(*spatial)`` otherwise; a ``MetaTensor`` gives a ``MetaTensor`` with a copy of
    its meta. Any intensity scale works (each image is normalised by its own statistics). The network is loaded
    once, on first use; the transform pickles into DataLoader workers without it, and each worker loads its own.

    Args:
        model_path: the segmentation bundle's ``model.pt`` (``model.json`` must be beside it).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``, or ``"auto"`` (CUDA when available).
        keep_components: largest regions kept (1: one structure, 2: the two lungs; ``None``: all).
        fill_holes: fill holes inside the kept regions.
        overlap: sliding-window overlap in [0, 1) (patch models).
        sw_batch_size: patches per forward pass (patch models).
        roi_size: patch size; default the one in ``model.json``.
        model_name: what the model segments, in error messages (``"lung segmentation"``).

    Raises:
        BadInputError: (on first use) no ``model.pt`` or ``model.json``, a ``model.json`` the network cannot be
            rebuilt from, or weights that do not fit it; each names the file.
        ValueError: bad arguments, or an input whose shape the model cannot take.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        keep_components: int | None = 1,
        fill_holes: bool = True,
        overlap: float = 0.25,
        sw_batch_size: int = 2,
        roi_size: Sequence[int] | None = None,
        model_name: str = "segmentation",
    ) -> None:
        if keep_components is not None and (isinstance(keep_components, bool) or int(keep_components) < 1):
            raise ValueError(f"keep_components must be None or an int >= 1, got {keep_components!r}.")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}.")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size!r}.")
        if roi_size is not None and (len(roi_size) not in (2, 3) or min(roi_size) < 1):
            raise ValueError(f"roi_size must be two or three positive sizes, got {roi_size!r}.")
        self.model_path = os.fspath(model_path)
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.keep_components = None if keep_components is None else int(keep_components)
        self.fill_holes = bool(fill_holes)
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.roi_size = None if roi_size is None else [int(v) for v in roi_size]
        self.model_name = model_name
        self._network: torch.nn.Module | None = None
        self.meta: dict | None = None
        self.spatial_dims: int | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_network"] = None  # workers load their own copy
        return state

    def load(self) -> torch.nn.Module:
        """Load (once) and return the network in eval mode; ``self.meta`` then holds ``model.json``."""
        if self._network is not None:
            return self._network
        from medplugin.networks.pretrained import load_trained_model

        dims: list[int] = []

        def build(meta: dict) -> torch.nn.Module:
            network, spatial_dims = segmentation_network_from_meta(meta)
            if "roi_size" not in meta and self.roi_size is None:
                self._image_size(meta, spatial_dims)
            if meta.get("normalization", "zscore") not in NORMALIZATIONS:
                raise ValueError(f"unknown normalization {meta.get('normalization')!r}")
            dims.append(spatial_dims)
            return network

        bundles = " or ".join(sorted(SEGMENTATION_BUNDLES.values()))
        network, meta = load_trained_model(self.model_path, build, self.model_name, f"its bundle ({bundles})",
                                           errors=(ValueError, TypeError, KeyError))
        self.meta, self.spatial_dims = meta, dims[0]
        self._network = network.to(self.device).eval()
        return self._network

    @staticmethod
    def _image_size(meta: dict, spatial_dims: int) -> list[int]:
        size = meta["image_size"]
        size = [int(size)] * spatial_dims if np.ndim(size) == 0 else [int(v) for v in size]
        if len(size) != spatial_dims or min(size) < 1:
            raise ValueError(f"image_size must be one or {spatial_dims} positive ints, got {meta['image_size']!r}")
        return size

    def _input(self, img: NdarrayOrTensor) -> torch.Tensor:
        """``img`` as a float32 CPU tensor ``(in_channels, *spatial)``."""
        sd = self.spatial_dims
        x = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img).detach().to("cpu", torch.float32)
        channels = (1, 3) if sd == 2 else (1,)
        if x.ndim == sd:
            x = x[None]
        elif x.ndim != sd + 1 or x.shape[0] not in channels:
            if sd == 2:
                raise ValueError(f"image must be (H, W) or channel-first (1 or 3, H, W), got shape {tuple(img.shape)}.")
            raise ValueError(f"image must be (slices, H, W) or single-channel (1, slices, H, W), got shape "
                             f"{tuple(img.shape)}.")
        if x.shape[0] == 3:
            x = 0.299 * x[0:1] + 0.587 * x[1:2] + 0.114 * x[2:3]
        in_ch = int((self.meta or {}).get("in_channels", 1))
        return x.repeat(in_ch, *([1] * sd)) if in_ch != 1 else x

    def probabilities(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Class probabilities ``(classes, *spatial)`` (float32, CPU, plain tensor) of ``img`` at its own size."""
        network = self.load()
        meta = self.meta or {}
        x = self._input(img)
        roi = self.roi_size or meta.get("roi_size")
        if roi is None and self.spatial_dims == 3:
            raise BadInputError(self.model_path, "model.json has no roi_size; pass roi_size=(slices, H, W)")
        if "normalization" in meta or (roi is None and "intensity_percentiles" not in meta):
            def normalize(t):
                return normalize_radiograph(t, meta.get("normalization", "zscore"))
        else:
            lo, hi = meta.get("intensity_percentiles", (0.5, 99.5))
            normalize = percentile_scaler(lo, hi)
        with torch.no_grad():
            if roi is not None:
                x = torch.as_tensor(normalize(x), dtype=torch.float32)[None].to(self.device)
                logits = sliding_window_inference(x, [int(v) for v in roi], self.sw_batch_size, network,
                                                  overlap=self.overlap, mode="gaussian")
                prob = torch.softmax(logits.float(), dim=1)
            else:
                size = tuple(x.shape[1:])
                x = normalize(torch.as_tensor(Resize(self._image_size(meta, self.spatial_dims), **RESIZE_2D)(x)))
                prob = torch.softmax(network(torch.as_tensor(x, dtype=torch.float32)[None].to(self.device)).float(), 1)
                mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
                prob = torch.nn.functional.interpolate(prob, size=size, mode=mode, align_corners=False)
        prob = prob[0].cpu()
        return prob.as_tensor() if isinstance(prob, MetaTensor) else prob

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return the cleaned label map of ``img`` at its own size (see the class docstring for the layout)."""
        labels = self.probabilities(img).argmax(0, keepdim=True).to(torch.uint8)
        mask = clean_mask(labels, self.keep_components, self.fill_holes)
        if img.ndim == self.spatial_dims:
            mask = mask[0]
        if isinstance(img, MetaTensor):
            return MetaTensor(mask, meta={**img.meta, "affine": img.affine.clone()})
        out, *_ = convert_to_dst_type(mask, img, dtype=torch.uint8 if torch.is_tensor(img) else np.uint8)
        return out
