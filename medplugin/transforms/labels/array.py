"""Labels from files: class (or multi-label finding) labels as MONAI Label exchanges them in label files, and
2D masks (one file, or the union of several).

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
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends

from medplugin.errors import BadInputError

__all__ = ["ClassIndexFromFile", "MultiHotFromFile", "LoadLungMask", "read_label_file"]

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
            raise BadInputError(
                source, f"a multi-label label must be finding names or 0/1 values, got {value!r}"
            ) from e
        if arr.shape != (len(self.class_names),) or not np.isin(arr, (0.0, 1.0)).all():
            raise BadInputError(source, f"a multi-label label must be {len(self.class_names)} values of 0/1 in the "
                                        f"order {self.class_names}, got {value!r}")
        return arr

    def __call__(self, label: Any) -> np.ndarray:
        """Return the 0/1 vector of ``label``."""
        if _is_label_file(label):
            return self._from_value(read_label_file(label), os.fspath(label))
        return self._from_value(label, "<label>")


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

        paths = (
            [os.fspath(filenames)] if isinstance(filenames, (str, os.PathLike)) else [os.fspath(f) for f in filenames]
        )
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
