"""Labels as MONAI Label exchanges them: class (or multi-label finding) labels read from label files, label
maps at the image's size.

MONAI Label keeps one label file per image (``<studies>/labels/final/<image id>.<ext>``) and hands its bundle
trainer ``{"image": <image path>, "label": <label file path>}`` records. Our classification bundles take that
file to hold the class: a text file with the class name (``CNV``) or index (``0``), or a JSON file
``{"label": "CNV"}``. Labels that are already class indices (training from a datalist) pass unchanged, so one
pipeline serves both.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform
from monai.utils import TransformBackends

from medplugin.errors import BadInputError

__all__ = ["ClassIndexFromFile", "MultiHotFromFile", "ResizeToSourceImage", "ToSourceVoxelOrder", "read_label_file"]

TEXT_SUFFIXES = (".txt", ".json")


def _is_label_file(value: Any) -> bool:
    """Whether ``value`` names a label file (a ``.txt``/``.json`` name, a path with a separator, or a file)."""
    if not isinstance(value, (str, os.PathLike)):
        return False
    s = os.fspath(value)
    return s.lower().endswith(TEXT_SUFFIXES) or os.path.sep in s or Path(s).is_file()


def read_label_file(path: str | os.PathLike) -> Any:
    """The label a MONAI Label label file holds: its text (stripped), or for ``.json`` its ``"label"`` value.

    Raises:
        BadInputError: naming the file, when it is missing, empty, not text, not valid JSON, or a JSON
            object without a ``"label"`` key.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "label file not found")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise BadInputError(path, "not a text label file (a class label file holds the class name)") from e
    if not text:
        raise BadInputError(path, "empty label file")
    if path.suffix.lower() != ".json":
        return text
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(path, f"not valid JSON ({e.msg})") from e
    if isinstance(content, dict):
        if "label" not in content:
            raise BadInputError(path, 'JSON label file needs a "label" key')
        content = content["label"]
    return content


class ClassIndexFromFile(Transform):
    """Turn a label (class index, class name, or the path of a label file naming the class) into an index.

    Args:
        class_names: the bundle's class order; names are matched case-insensitively.

    A label file is read when the label is a string ending in ``.txt`` or ``.json``, or a path that exists.
    Its content is a class name or index (text), or ``{"label": name_or_index}`` (JSON). Numbers (Python,
    numpy or 0-d torch) are checked against the number of classes and returned as ``int``. An unknown name,
    an index out of range, a missing or empty file raises :class:`medplugin.errors.BadInputError` naming the
    file (or the value) and the reason.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, class_names: Sequence[str]) -> None:
        names = [str(c) for c in class_names]
        if not names:
            raise ValueError("class_names must name at least one class, got an empty list.")
        lowered = [c.lower() for c in names]
        if len(set(lowered)) != len(lowered):
            raise ValueError(f"class_names must be unique (case-insensitively), got {names!r}.")
        self.class_names = names
        self._index = {c: i for i, c in enumerate(lowered)}

    def _from_value(self, value: Any, source: str) -> int:
        if isinstance(value, str):
            text = value.strip()
            if text.lower() in self._index:
                return self._index[text.lower()]
            if text.lstrip("-").isdigit():
                return self._from_value(int(text), source)
            raise BadInputError(source, f"unknown class {text!r}; expected one of {self.class_names}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise BadInputError(source, f"a class label must be a name or an integer index, got {value!r}")
        if not 0 <= int(value) < len(self.class_names):
            raise BadInputError(source, f"class index {int(value)} out of range for {len(self.class_names)} classes")
        return int(value)

    def __call__(self, label: Any) -> int:
        """Return the class index of ``label``."""
        if isinstance(label, torch.Tensor) or isinstance(label, np.ndarray):
            n = label.size if isinstance(label, np.ndarray) else label.numel()
            if n != 1:
                raise BadInputError("<label>", f"a class label must be a scalar, got shape {tuple(label.shape)}")
            label = label.reshape(()).item()
            if isinstance(label, float) and label.is_integer():
                label = int(label)
            return self._from_value(label, "<label>")
        if _is_label_file(label):
            return self._from_value(read_label_file(label), os.fspath(label))
        return self._from_value(label, "<label>")


_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def _norm(text: str) -> str:
    return _NOT_ALNUM.sub("", str(text).lower())


class MultiHotFromFile(Transform):
    """Turn a multi-label label (a 0/1 vector, a list of names, or a label file naming them) into a vector.

    The multi-label twin of :class:`ClassIndexFromFile`, for bundles whose classes are independent findings
    (ChestX-ray14). A text label file lists the findings present separated by ``|`` (as NIH's
    ``Finding Labels`` column), commas, semicolons or new lines, or holds one of ``none_names`` (``No Finding``)
    for none; a JSON file holds ``{"label": [...]}`` or a list. Names match case-, space- and
    underscore-insensitively (``pleural thickening`` is ``Pleural_Thickening``).

    Args:
        class_names: the bundle's finding order; the vector's entries follow it.
        none_names: labels that mean no finding present.

    Returns a float32 numpy vector of ``len(class_names)`` zeros and ones. A vector of another length or with
    other values, an unknown name, a missing or empty file raises :class:`medplugin.errors.BadInputError`
    naming the file (or ``<label>``) and the reason.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]
    SEPARATORS = re.compile(r"[|,;\n]")

    def __init__(self, class_names: Sequence[str], none_names: Sequence[str] = ("No Finding",)) -> None:
        names = [str(c) for c in class_names]
        if not names:
            raise ValueError("class_names must name at least one class, got an empty list.")
        keys = [_norm(c) for c in names]
        if len(set(keys)) != len(keys) or not all(keys):
            raise ValueError(f"class_names must be unique ignoring case, spaces and punctuation, got {names!r}.")
        self.class_names = names
        self._index = {k: i for i, k in enumerate(keys)}
        self._none = {_norm(n) for n in none_names}

    def _from_names(self, names: Sequence[str], source: str) -> np.ndarray:
        out = np.zeros(len(self.class_names), np.float32)
        parts = [str(n).strip() for n in names]
        if len(parts) == 1 and _norm(parts[0]) in self._none:
            return out
        for p in parts:
            i = self._index.get(_norm(p))
            if i is None:
                raise BadInputError(source, f"unknown finding {p!r}; expected names from {self.class_names}"
                                            " separated by '|' (or 'No Finding')")
            out[i] = 1.0
        return out

    def _from_value(self, value: Any, source: str) -> np.ndarray:
        if isinstance(value, str):
            parts = [p for p in self.SEPARATORS.split(value) if p.strip()]
            if not parts:
                raise BadInputError(source, "no finding named (write 'No Finding' for none)")
            return self._from_names(parts, source)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) and value:
            return self._from_names(value, source)
        try:
            arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise BadInputError(source, f"a multi-label label must be finding names or 0/1 values, got {value!r}") from e
        if arr.shape != (len(self.class_names),) or not np.isin(arr, (0.0, 1.0)).all():
            raise BadInputError(source, f"a multi-label label must be {len(self.class_names)} values of 0/1 in the "
                                        f"order {self.class_names}, got {value!r}")
        return arr

    def __call__(self, label: Any) -> np.ndarray:
        """Return the 0/1 vector of ``label``."""
        if _is_label_file(label):
            return self._from_value(read_label_file(label), os.fspath(label))
        return self._from_value(label, "<label>")


class ResizeToSourceImage(Transform):
    """Resize a 2D label map ``(C, H, W)`` (or ``(H, W)``) back to the size of the image file it was predicted on.

    Networks see a resized image; a viewer (and MONAI Label, which writes the answer beside the image) wants
    the mask on the image's own pixel grid. The size is read from the source file's header (PNG, JPEG, TIFF,
    BMP or DICOM; nothing is decoded). Nearest-neighbour interpolation keeps label values.

    Args:
        mode: interpolation mode of ``torch.nn.functional.interpolate`` (``"nearest"`` for label maps).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, mode: str = "nearest") -> None:
        self.mode = mode

    def __call__(self, label, source: str | os.PathLike):
        """Return ``label`` resized to the size of the image at ``source``, same type, dtype and channels."""
        from medplugin.data.lungseg import image_size_2d

        rows, cols = image_size_2d(source)
        t = torch.as_tensor(label)
        if t.ndim not in (2, 3):
            raise ValueError(f"expected a 2D label map (C, H, W) or (H, W), got shape {tuple(t.shape)}.")
        squeeze = t.ndim == 2
        x = t[None, None] if squeeze else t[None]
        if tuple(x.shape[-2:]) != (rows, cols):
            kwargs = {} if self.mode in ("nearest", "nearest-exact", "area") else {"align_corners": False}
            x = torch.nn.functional.interpolate(x.float(), size=(rows, cols), mode=self.mode, **kwargs).to(t.dtype)
        out = x[0, 0] if squeeze else x[0]
        return out.numpy() if isinstance(label, np.ndarray) else out


class ToSourceVoxelOrder(Transform):
    """Put a 3D label map predicted on a slices-first volume back into the voxel order of its NIfTI file.

    medplugin's knee loader (:func:`medplugin.io.mrnet.read_knee_volume`) reorders a NIfTI volume to
    ``(slice, row, column)`` with sagittal slices (``order="sagittal"``) or reverses the file's axes
    (``order="file"``). A mask written with the file's affine must have the file's voxel order, or a viewer
    lays it across the image: this transform applies the inverse permutation (read from the file's header).

    Args:
        order: the loader's ``order`` (``"sagittal"`` or ``"file"``).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, order: str = "sagittal") -> None:
        if order not in ("sagittal", "file"):
            raise ValueError(f"order must be 'sagittal' or 'file', got {order!r}.")
        self.order = order

    def permutation(self, source: str | os.PathLike) -> tuple[int, int, int]:
        """The loader's axis permutation for the NIfTI file ``source`` (file axes -> slices-first axes)."""
        from medplugin.io.mrnet import _sagittal_permutation

        affine, _ = self.header(source)
        return _sagittal_permutation(affine) if self.order == "sagittal" else (2, 1, 0)

    @staticmethod
    def header(source: str | os.PathLike) -> tuple[np.ndarray, tuple[int, ...]]:
        """``(affine, spatial shape)`` of the NIfTI file ``source``, from its header."""
        from monai.utils import optional_import

        nib, has_nib = optional_import("nibabel")
        path = os.fspath(source)
        if not os.path.isfile(path) or not path.lower().endswith((".nii", ".nii.gz")):
            raise BadInputError(path, "not a NIfTI file: the voxel order of a mask is that of a NIfTI source")
        if not has_nib:
            raise BadInputError(path, "reading NIfTI needs nibabel (pip install nibabel)")
        try:
            img = nib.load(path)
            return np.asarray(img.affine, dtype=np.float64), tuple(int(n) for n in img.shape[:3])
        except Exception as e:  # damaged header
            raise BadInputError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from e

    def __call__(self, label, source: str | os.PathLike):
        """Return ``label`` (``(C, S, R, Cc)`` or ``(S, R, Cc)``) in the file's voxel order, same type."""
        if label.ndim not in (3, 4):
            raise ValueError(f"expected a 3D label map (C, S, R, C) or (S, R, C), got shape {tuple(label.shape)}.")
        inverse = [int(i) for i in np.argsort(self.permutation(source))]
        axes = inverse if label.ndim == 3 else [0, *(i + 1 for i in inverse)]
        if isinstance(label, np.ndarray):
            return np.ascontiguousarray(label.transpose(axes))
        return label.permute(*axes).contiguous()
