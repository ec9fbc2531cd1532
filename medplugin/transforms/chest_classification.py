"""The chest X-ray classifier's preprocessing, defined once and referenced by every config of the bundle.

Multi-label (ChestX-ray14) variant of :func:`medplugin.transforms.image_classification_preprocessing`: the
same load -> [0, 1] -> resize -> normalise chain, the 14-value ``label`` made a float tensor, and an
optional lung crop first (``lung_crop=True``): the lung fields are segmented by the ``lung_xray_segmentation``
bundle's U-Net (:class:`medplugin.transforms.SegmentLungsd`) and the image is cut to their bounding box plus a
margin (:class:`medplugin.transforms.LungCropd`), as in the segment-then-classify pipelines of Liu et al. 2019
("SDFN: Segmentation-based deep fusion network for thoracic disease classification in chest X-ray images").
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import list_data_collate
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Resized,
    ScaleIntensityRanged,
)
from monai.utils import TransformBackends

from medplugin.transforms.io import LoadImage2dd

__all__ = ["chest_xray_preprocessing", "CropBoxToTensord", "collate_with_defaults", "NO_CROP_BOX"]

NO_CROP_BOX = (-1, -1, -1, -1, -1, -1)
"""``crop_box`` of an item without a lung crop (e.g. an unreadable file in batch inference)."""


class CropBoxToTensord(MapTransform):
    """Turn the lung-crop box dict of :class:`medplugin.transforms.LungCropd` into a collatable int tensor.

    ``data[box_key] = {"start": [r0, c0], "end": [r1, c1], "empty": bool}`` becomes
    ``data[out_key] = tensor([r0, c0, r1, c1, H, W])`` (the crop in pixels of the loaded image, end-exclusive,
    then the loaded image's size ``(H, W)`` read from ``size_key``'s ``original_shape`` meta or, when absent,
    the crop itself), and the box dict and ``mask_key`` are removed so that batches collate. Evaluation uses
    it to map ground-truth boxes into the classifier's frame.

    Args:
        keys: unused placeholder for the MapTransform signature (the image key).
        box_key: key of the box dict.
        out_key: key of the tensor written.
        mask_key: key of the lung mask to drop (``None``: keep).
        size_key: key of the loaded image (a ``MetaTensor`` with ``original_shape`` meta).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, keys: KeysCollection = "image", box_key: str = "lung_box", out_key: str = "crop_box",
                 mask_key: str | None = "lung_mask", size_key: str = "image") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.box_key, self.out_key, self.mask_key, self.size_key = box_key, out_key, mask_key, size_key
        self._shape_key = "_loaded_shape"

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        box = d.pop(self.box_key, None)
        if self.mask_key is not None:
            d.pop(self.mask_key, None)
        if box is None:
            return d
        h, w = d.pop(self._shape_key, (int(box["end"][0]), int(box["end"][1])))
        d[self.out_key] = torch.tensor([*box["start"], *box["end"], h, w], dtype=torch.long)
        return d


class _RememberShaped(MapTransform):
    """Store ``data[key]``'s spatial shape under ``_loaded_shape`` (read by :class:`CropBoxToTensord`)."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d["_loaded_shape"] = tuple(int(s) for s in d[key].shape[-2:])
            break
        return d


def chest_xray_preprocessing(
    image_size: int,
    channels: int = 1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    lung_crop: bool = False,
    lung_model_path: str | None = None,
    lung_margin: float | Sequence[float] = 0.05,
    lung_device: str | torch.device = "cpu",
    keys: Sequence[str] = ("image",),
) -> Compose:
    """Deterministic preprocessing of the chest X-ray classifier (train, validation, evaluation, inference).

    Steps: load (PNG/JPEG/DICOM, ``channels`` channels on 0..255, the file path kept under ``path``) ->
    [lung crop] -> [0, 1] -> resize to ``image_size`` (whole image, aspect not kept) -> normalise with
    ``mean``/``std`` -> plain tensors; ``label`` (14 values of 0/1, optional) becomes a float32 tensor.
    With ``lung_crop`` the item also carries ``crop_box`` ``tensor([r0, c0, r1, c1, H, W])``: the crop in the
    loaded image's pixels and that image's size.

    Args:
        image_size: square network input size.
        channels: 1 (grayscale) or 3 (RGB).
        mean: per-channel mean on the [0, 1] scale (``medplugin.networks.input_normalization``).
        std: per-channel std; both or neither.
        lung_crop: segment the lungs and crop to them before resizing.
        lung_model_path: the ``lung_xray_segmentation`` bundle's ``model.pt`` (``model.json`` beside it);
            required with ``lung_crop``.
        lung_margin: margin around the lungs' box, a fraction of its size (one number or ``(rows, cols)``).
        lung_device: where the lung U-Net runs.
        keys: image keys.

    Raises:
        ValueError: bad sizes, mean/std, or ``lung_crop`` without ``lung_model_path``.
    """
    if int(image_size) < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size!r}.")
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}.")
    keys = list(keys)
    steps: list = [LoadImage2dd(keys, channels=channels, path_key="path")]
    if lung_crop:
        if not lung_model_path:
            raise ValueError("lung_crop needs lung_model_path: the lung_xray_segmentation bundle's model.pt.")
        from medplugin.transforms.chest import LungCropd, SegmentLungsd

        steps += [
            _RememberShaped(keys[0]),
            SegmentLungsd(keys[0], model_path=lung_model_path, mask_key="lung_mask", device=lung_device),
            LungCropd(keys, mask_key="lung_mask", margin=lung_margin, box_key="lung_box"),
            CropBoxToTensord(keys[0]),
        ]
    steps += [
        ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
        Resized(keys, spatial_size=(int(image_size), int(image_size)), mode="bilinear", anti_aliasing=True),
    ]
    if mean is not None:
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} value(s), got mean={list(mean)}, std={list(std)}.")
        steps.append(NormalizeIntensityd(keys, subtrahend=list(mean), divisor=list(std), channel_wise=True))
    steps.append(EnsureTyped(keys, track_meta=False))
    steps.append(EnsureTyped("label", data_type="tensor", dtype=torch.float32, track_meta=False,
                             allow_missing_keys=True))
    return Compose(steps)


def _collate_with_defaults(batch: list, defaults: Mapping[str, object]):
    if isinstance(batch, list) and batch and all(isinstance(b, dict) for b in batch):
        present = set().union(*(b.keys() for b in batch))
        batch = [
            {**{k: torch.as_tensor(v) for k, v in defaults.items() if k in present and k not in b}, **b} for b in batch
        ]
    return list_data_collate(batch)


def collate_with_defaults(defaults: Mapping[str, object] | None = None):
    """A DataLoader ``collate_fn``: MONAI's ``list_data_collate`` after filling keys some items lack.

    Batch inference turns an unreadable file into an error item without the keys good items have (e.g.
    ``crop_box`` with a lung crop); this fills them from ``defaults`` (only keys some item has) so that the
    batch still collates. Picklable (a ``functools.partial``), so it works with DataLoader workers.

    Args:
        defaults: key -> value given to items without that key (default: ``crop_box`` = :data:`NO_CROP_BOX`).
    """
    d = {"crop_box": NO_CROP_BOX} if defaults is None else dict(defaults)
    return functools.partial(_collate_with_defaults, defaults=d)
