"""Voxel grids: check that a mask lies on its image's grid; put a result back on the loaded image's grid (MONAI's
``Invertd`` on the preprocessing) and in the voxel order of the file the image was read from."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Invertd, Orientation, Transform
from monai.utils import TransformBackends, optional_import

from medplugin.errors import BadInputError

nib, _ = optional_import("nibabel")

__all__ = ["CheckGeometry", "ToOriginalOrientation", "has_trace", "to_input_grid"]

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's axis codes, as aff2axcodes writes them


class CheckGeometry(Transform):
    """Check that a mask lies on its image's voxel grid: same spatial shape and (for ``MetaTensor``) affine.

    Used after loading image/mask pairs whose headers could not be compared when indexing (DICOM series).
    Both are channel-first ``(C, *spatial)``.

    Args:
        affine_atol: tolerance in mm when comparing affines.

    Raises:
        BadInputError: naming the mask file (when known) and both shapes or the affine difference.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, affine_atol: float = 1e-3) -> None:
        self.affine_atol = float(affine_atol)

    def __call__(self, mask: NdarrayOrTensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return ``mask`` unchanged if it matches ``img``."""
        name = mask.meta.get("filename_or_obj") if isinstance(mask, MetaTensor) else None
        if tuple(mask.shape[1:]) != tuple(img.shape[1:]):
            raise BadInputError(
                name, f"mask shape {tuple(mask.shape[1:])} differs from its image's {tuple(img.shape[1:])}"
            )
        if isinstance(mask, MetaTensor) and isinstance(img, MetaTensor):
            diff = float((mask.affine.double() - img.affine.double()).abs().max())
            if diff > self.affine_atol:
                raise BadInputError(
                    name, f"mask affine differs from its image's by up to {diff:.4g} mm: not the same grid"
                )
        return mask


class ToOriginalOrientation(Transform):
    """Put a channel-first array on a loader's voxel grid back in the voxel order of the file it was read from.

    Loaders keep the file's own affine as ``meta["original_affine"]`` (MONAI's convention) and the affine of the
    array they return as ``meta["affine"]``; when a loader reorders the axes (the knee loader reads NIfTI
    volumes slices-first, sagittal), a mask or map written with the file's affine must have the file's voxel
    order, or a viewer lays it across the image. This is MONAI's ``Orientation`` to the axis codes of
    ``original_affine`` (the step MONAI Label's ``Restored(invert_orient=True)`` takes), checked to land exactly
    on ``original_affine``; ``meta["spatial_shape"]`` is set to the new spatial shape. An array already on its
    file's grid (or without ``original_affine``) is returned as is.

    Raises:
        ValueError: an image that is not a ``MetaTensor`` (and no ``ref`` is given), or a grid that is not an
            axis permutation or flip of the file's.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: NdarrayOrTensor, ref: MetaTensor | None = None) -> MetaTensor:
        """Return ``img`` (``(C, *spatial)``) in its file's voxel order; ``ref`` lends its grid to a plain ``img``."""
        src = ref if ref is not None else img
        if not isinstance(src, MetaTensor):
            raise ValueError("ToOriginalOrientation needs a MetaTensor (or a MetaTensor ref) with the loader's affine.")
        original = src.meta.get("original_affine")
        x = img if isinstance(img, MetaTensor) and ref is None else MetaTensor(
            torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img),
            meta={k: v for k, v in src.meta.items() if k != "affine"}, affine=src.affine.clone())
        if original is None:
            return x
        original = np.asarray(torch.as_tensor(original).double().cpu().numpy())
        affine = x.affine.double().cpu().numpy()
        if not np.allclose(affine, original, atol=1e-4):
            orient = Orientation(axcodes="".join(nib.orientations.aff2axcodes(original)), labels=_RAS_LABELS)
            with orient.trace_transform(False):
                x = orient(x)
            if not np.allclose(x.affine.double().cpu().numpy(), original, atol=1e-4):
                raise ValueError(f"{src.meta.get('filename_or_obj', 'image')}: its grid is not an axis permutation "
                                 "or flip of the file's (original_affine); cannot put it back in the file's order")
        x.meta["spatial_shape"] = np.asarray(x.shape[1:])
        return x


def has_trace(image) -> bool:
    """Whether ``image`` is a ``MetaTensor`` that records invertible transforms (MONAI's ``applied_operations``)."""
    return isinstance(image, MetaTensor) and bool(image.applied_operations)


def to_input_grid(data: torch.Tensor, image, transform: Callable | None, nearest: bool = False,
                  image_key: str = "image") -> torch.Tensor:
    """``data`` computed on a preprocessed image ``(C, *spatial)`` put back on the loaded image's grid with
    MONAI's ``Invertd`` (``transform``: the preprocessing that made ``image``, whose record ``image`` carries;
    ``image_key``: the image's key in that preprocessing).

    Without a record (no invertible step, or an image without metadata) ``data`` is returned unchanged, as a
    ``MetaTensor`` with ``image``'s metadata when there is any. Interpolation: the preprocessing's own (e.g.
    bilinear for a resize), or nearest with ``nearest``; cropped regions come back as zeros.
    """
    x = torch.as_tensor(data.as_tensor() if isinstance(data, MetaTensor) else data)
    if has_trace(image) and transform is not None:
        key = "data" if image_key != "data" else "map"
        d = Invertd(key, transform=transform, orig_keys=image_key, nearest_interp=nearest)(
            {image_key: image, key: MetaTensor(x)})
        return d[key]
    if isinstance(image, MetaTensor):
        return MetaTensor(x, meta={k: v for k, v in image.meta.items() if k != "affine"}, affine=image.affine.clone())
    return x
