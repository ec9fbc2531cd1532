"""The chest X-ray classifier's preprocessing, defined once and referenced by every config of the bundle.

Multi-label (ChestX-ray14) variant of :func:`medplugin.transforms.image_classification_preprocessing`: the
same load -> [0, 1] -> resize -> normalise chain (built by it), the 14-value ``label`` made a float tensor, and an
optional lung crop first (``lung_crop=True``): the lung fields are segmented by the ``lung_xray_segmentation``
bundle's U-Net (:class:`medplugin.transforms.SegmentWithModeld`) and the image is cut to their bounding box plus
a margin (:class:`medplugin.transforms.CropToMaskd`), as in the segment-then-classify pipelines of Liu et al. 2019
("SDFN: Segmentation-based deep fusion network for thoracic disease classification in chest X-ray images").
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from monai.data import list_data_collate
from monai.transforms import Compose, EnsureTyped

from medplugin.transforms.crop.dictionary import NO_CROP_BOX, CropBoxToTensord, CropToMaskd, RememberShaped
from medplugin.transforms.presets.classification import image_classification_preprocessing
from medplugin.transforms.segment.dictionary import SegmentWithModeld

__all__ = ["chest_xray_preprocessing", "collate_with_defaults"]


def chest_xray_preprocessing(image_size: int, channels: int = 1, mean: Sequence[float] | None = None,
                             std: Sequence[float] | None = None, lung_crop: bool = False,
                             lung_model_path: str | None = None, lung_margin: float | Sequence[float] = 0.05,
                             lung_device: str | torch.device = "cpu", keys: Sequence[str] = ("image",)) -> Compose:
    """Deterministic preprocessing of the chest X-ray classifier (train, validation, evaluation, inference).

    :func:`~medplugin.transforms.image_classification_preprocessing` without the ``uint8`` cache step (load ->
    [0, 1] -> resize to ``image_size`` -> normalise with ``mean``/``std`` -> plain tensors), with the lung crop
    after loading (``lung_crop``), and ``label`` (14 values of 0/1, optional) made a float32 tensor. With
    ``lung_crop`` the item also carries ``crop_box`` ``tensor([r0, c0, r1, c1, H, W])``: the crop in the loaded
    image's pixels and that image's size.

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
    keys = list(keys)
    steps = list(image_classification_preprocessing(image_size, channels, mean, std, keys, uint8=False).transforms)
    if lung_crop:
        if not lung_model_path:
            raise ValueError("lung_crop needs lung_model_path: the lung_xray_segmentation bundle's model.pt.")
        steps[1:1] = [  # right after loading
            RememberShaped(keys[0]),
            SegmentWithModeld(keys[0], model_path=lung_model_path, mask_key="lung_mask", device=lung_device,
                              keep_components=2, fill_holes=True, model_name="lung segmentation"),
            CropToMaskd(keys, mask_key="lung_mask", margin=lung_margin, margin_unit="fraction", spatial_dims=2,
                        mask_name="lung", box_key="lung_box"),
            CropBoxToTensord(keys[0]),
        ]
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
