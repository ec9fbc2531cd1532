"""Knee MRI classification input: per-volume intensity scaling, in-plane resize, fixed slice count.

MRNet (Bien et al. 2018, PLOS Medicine) fed each exam at its own slice count with batch size 1; here the slice
count can be made fixed (``num_slices``: the central slices are kept, or black slices padded on both sides,
so exams batch together) or left as is (``num_slices=None``: use batch size 1). Every step is recorded in a
12-number geometry vector so a class activation map computed on the network input can be put back on the
voxel grid of the file (:func:`cam_to_input_grid`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, Transform
from monai.utils import TransformBackends

__all__ = [
    "KneeClassificationInput",
    "KneeClassificationInputd",
    "KneeClassificationInputD",
    "KneeClassificationInputDict",
    "cam_to_input_grid",
    "knee_classification_preprocessing",
    "knee_classification_augmentation",
]


def _slice_window(n_in: int, n_out: int | None) -> tuple[int, int, int]:
    """``(src_start, dst_start, count)``: ``out[dst_start:dst_start+count] = in[src_start:src_start+count]``."""
    if n_out is None or n_out == n_in:
        return 0, 0, n_in
    if n_in > n_out:  # keep the central slices (the ACL is central in a sagittal knee series)
        return (n_in - n_out) // 2, 0, n_out
    return 0, (n_out - n_in) // 2, n_in


class KneeClassificationInput(Transform):
    """Turn a ``(1, slices, H, W)`` knee volume into the classifier's input, recording the geometry.

    Steps: intensities scaled per volume so the ``lower``/``upper`` percentiles map to 0/1 (clipped; MRI has
    no absolute scale), in-plane bilinear resize to ``image_size`` x ``image_size``, slice count made
    ``num_slices`` (central crop, or zero padding on both sides; ``None`` keeps it), then ``(x - mean) / std``.

    Args:
        image_size: in-plane size.
        num_slices: slice count of the output, or ``None`` to keep each volume's own.
        mean: subtracted after scaling to [0, 1].
        std: divisor after subtracting ``mean``.
        lower: lower intensity percentile.
        upper: upper intensity percentile.

    Returns (``__call__``): ``(volume, geometry)``: ``float32`` tensor ``(1, n, image_size, image_size)`` and
    ``int64`` ``[S, H, W, src_start, dst_start, count]`` (the input's spatial shape and the slice window).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, image_size: int = 256, num_slices: int | None = 32, mean: float = 0.449, std: float = 0.226,
                 lower: float = 0.5, upper: float = 99.5) -> None:
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size!r}.")
        if num_slices is not None and int(num_slices) < 1:
            raise ValueError(f"num_slices must be >= 1 or None, got {num_slices!r}.")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std!r}.")
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower!r}, upper={upper!r}.")
        self.image_size = int(image_size)
        self.num_slices = None if num_slices is None else int(num_slices)
        self.mean, self.std = float(mean), float(std)
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, img: NdarrayOrTensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img) if not torch.is_tensor(img) else img)
        x = x.detach().float().cpu()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"expected a (1, slices, H, W) or (slices, H, W) volume, got shape {tuple(img.shape)}.")
        s, h, w = x.shape[1:]
        flat = x.flatten()
        if flat.numel() > 2_000_000:  # quantile of a subsample: torch.quantile refuses very large inputs
            flat = flat[torch.linspace(0, flat.numel() - 1, 2_000_000).long()]
        lo, hi = torch.quantile(flat, torch.tensor([self.lower / 100, self.upper / 100]))
        x = ((x - lo) / (hi - lo)).clamp(0, 1) if hi > lo else torch.zeros_like(x)
        if (h, w) != (self.image_size, self.image_size):
            x = F.interpolate(x[0][:, None], size=(self.image_size,) * 2, mode="bilinear", align_corners=False,
                              antialias=min(h, w) > self.image_size)[:, 0][None]
        src, dst, count = _slice_window(s, self.num_slices)
        if self.num_slices is not None and self.num_slices != s:
            out = torch.zeros(1, self.num_slices, self.image_size, self.image_size)
            out[:, dst:dst + count] = x[:, src:src + count]
            x = out
        x = (x - self.mean) / self.std
        return x.contiguous(), torch.tensor([s, h, w, src, dst, count], dtype=torch.int64)


class KneeClassificationInputd(MapTransform):
    """Dictionary wrapper of :class:`KneeClassificationInput`; the geometry goes under ``geometry_key``.

    The geometry vector has 12 numbers: the loaded volume's spatial shape ``(S0, H0, W0)``, the ROI box
    start and end (``box_key``, from :class:`~medplugin.transforms.knee.CropToMaskd`; the whole volume
    without it) and the slice window ``(src_start, dst_start, count)``.

    Args:
        keys: the image key.
        image_size, num_slices, mean, std, lower, upper: as :class:`KneeClassificationInput`.
        geometry_key: where to store the geometry.
        box_key: the ROI box key, if a crop came before.
        allow_missing_keys: do not raise if the key is absent.
    """

    backend = KneeClassificationInput.backend

    def __init__(self, keys: KeysCollection, image_size: int = 256, num_slices: int | None = 32,
                 mean: float = 0.449, std: float = 0.226, lower: float = 0.5, upper: float = 99.5,
                 geometry_key: str = "geometry", box_key: str = "roi_box", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.prep = KneeClassificationInput(image_size, num_slices, mean, std, lower, upper)
        self.geometry_key, self.box_key = geometry_key, box_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            cropped = [int(v) for v in img.shape[-3:]]
            box = d.get(self.box_key) if self.box_key else None
            if isinstance(img, MetaTensor) and "spatial_shape" in img.meta and box is not None:
                full = [int(v) for v in np.asarray(img.meta["spatial_shape"]).reshape(-1)[-3:]]
            else:
                full = cropped
            start = [int(v) for v in box["start"]] if box is not None else [0, 0, 0]
            end = [a + b for a, b in zip(start, cropped)]
            d[key], window = self.prep(img)
            d[self.geometry_key] = torch.tensor([*full, *start, *end, *window[3:].tolist()], dtype=torch.int64)
        return d


KneeClassificationInputD = KneeClassificationInputDict = KneeClassificationInputd


def cam_to_input_grid(cam: torch.Tensor | np.ndarray, geometry: Sequence[int] | torch.Tensor) -> np.ndarray:
    """Put a map computed on the network input back on the loaded volume's voxel grid.

    Args:
        cam: ``(n, h, w)`` map on the network input (any leading singleton dimensions).
        geometry: the 12-number vector of :class:`KneeClassificationInputd`.

    Returns:
        ``float32`` ``(S0, H0, W0)``: zero outside the ROI box and on slices the network did not see.
    """
    g = [int(v) for v in (geometry.tolist() if hasattr(geometry, "tolist") else geometry)]
    if len(g) != 12:
        raise ValueError(f"geometry must have 12 numbers, got {len(g)}.")
    full, start, end, (src, dst, count) = g[0:3], g[3:6], g[6:9], g[9:12]
    t = torch.as_tensor(np.asarray(cam.detach().cpu() if torch.is_tensor(cam) else cam), dtype=torch.float32)
    t = t.reshape(t.shape[-3:])
    s1, h1, w1 = (e - s for s, e in zip(start, end))
    vol = torch.zeros(s1, t.shape[1], t.shape[2])
    vol[src:src + count] = t[dst:dst + count]
    if (t.shape[1], t.shape[2]) != (h1, w1):
        vol = F.interpolate(vol[:, None], size=(h1, w1), mode="bilinear", align_corners=False)[:, 0]
    out = torch.zeros(*full)
    out[start[0]:end[0], start[1]:end[1], start[2]:end[2]] = vol
    return out.numpy()


def knee_classification_preprocessing(
    image_size: int = 256,
    num_slices: int | None = 32,
    mean: float = 0.449,
    std: float = 0.226,
    roi_crop: bool = False,
    roi_model_path: str | None = None,
    roi_margin_mm: float = 10.0,
    roi_device: str | torch.device = "cpu",
    npy_spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Compose:
    """The knee classification bundle's deterministic preprocessing (train, evaluate and inference share it).

    Load (NIfTI, DICOM series folder or MRNet ``.npy``, slices first in sagittal order, the path kept under
    ``path``), optionally segment the ACL region with the segmentation bundle's 3D U-Net and crop to it with a
    margin (``roi_crop``; :class:`~medplugin.transforms.knee.SegmentROId`, :class:`~medplugin.transforms.knee.CropToMaskd`),
    then :class:`KneeClassificationInputd`.

    Args:
        image_size: in-plane size.
        num_slices: fixed slice count, or ``None`` (batch size 1).
        mean: normalisation mean.
        std: normalisation std.
        roi_crop: segment and crop to the ACL region first.
        roi_model_path: the segmentation bundle's ``model.pt`` (with ``model.json``), for ``roi_crop``.
        roi_margin_mm: margin around the segmented region, in mm.
        roi_device: where the segmentation network runs.
        npy_spacing: voxel size assumed for MRNet ``.npy`` exams (they carry none).

    Raises:
        ValueError: ``roi_crop`` without ``roi_model_path``.
    """
    from monai.transforms import DeleteItemsd

    from medplugin.transforms.io import LoadKneeVolumed
    from medplugin.transforms.knee import CropToMaskd, SegmentROId

    steps: list = [LoadKneeVolumed(keys="image", channel_first=True, npy_spacing=npy_spacing, path_key="path")]
    if roi_crop:
        if not roi_model_path:
            raise ValueError("roi_crop needs roi_model_path: the knee_mri_segmentation bundle's models/model.pt.")
        steps += [
            SegmentROId(keys="image", model_path=roi_model_path, mask_key="roi_mask", device=roi_device),
            CropToMaskd(keys="image", mask_key="roi_mask", margin=roi_margin_mm, margin_unit="mm", box_key="roi_box"),
            DeleteItemsd(keys="roi_mask"),
        ]
    steps.append(KneeClassificationInputd(keys="image", image_size=image_size, num_slices=num_slices, mean=mean,
                                          std=std, box_key="roi_box"))
    if roi_crop:
        steps.append(DeleteItemsd(keys="roi_box"))
    return Compose(steps)


def knee_classification_augmentation(rotate_degrees: float = 10.0, intensity: float = 0.1, prob: float = 0.5) -> Compose:
    """Training augmentation on the prepared ``(1, slices, H, W)`` volume: small in-plane rotation and scaling,
    intensity shift. No flips: the ligament's orientation is part of the anatomy.

    Args:
        rotate_degrees: largest in-plane rotation.
        intensity: largest intensity offset (in normalised units).
        prob: probability of each augmentation.
    """
    from monai.transforms import RandAffined, RandShiftIntensityd

    rad = float(np.deg2rad(rotate_degrees))
    return Compose([
        RandAffined(keys="image", prob=prob, rotate_range=(rad, 0.0, 0.0), scale_range=(0.0, 0.08, 0.08),
                    mode="bilinear", padding_mode="border"),
        RandShiftIntensityd(keys="image", offsets=intensity, prob=prob),
    ])
