"""The few ``pydicom.pixels`` functions :mod:`medplugin.io.dicom` uses, for pydicom 2.x.

The reader is written against pydicom 3. MONAI Label 0.8.5's environment must keep pydicom 2 (its
``pydicom-seg`` dependency imports a module pydicom 3 removed); with this module the same reader, and so the
bundles' DICOM input, works there too. The tests compare what both give on real DICOM files.
"""

from __future__ import annotations

from typing import Any

import pydicom.config
from pydicom.pixel_data_handlers.util import (  # noqa: F401 - re-exported under pydicom 3's names
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    convert_color_space,
)

__all__ = ["apply_color_lut", "apply_modality_lut", "apply_voi", "apply_windowing", "get_decoder", "pixel_array"]


class _Decoder:
    """What the reader asks of pydicom 3's ``Decoder``: whether a plugin is installed, and what is missing."""

    def __init__(self, handlers: list) -> None:
        self._handlers = handlers

    @property
    def is_available(self) -> bool:
        return any(h.is_available() for h in self._handlers)

    @property
    def missing_dependencies(self) -> list[str]:
        out = []
        for h in self._handlers:
            deps = getattr(h, "DEPENDENCIES", {}) or {}
            name = getattr(h, "HANDLER_NAME", h.__name__.rsplit(".", 1)[-1])
            out.append(f"{name} needs {', '.join(deps) or 'its plugin'}")
        return out


def get_decoder(uid: Any) -> _Decoder:
    """The pixel data handlers that support transfer syntax ``uid``; NotImplementedError when none does."""
    handlers = [h for h in pydicom.config.pixel_data_handlers if h.supports_transfer_syntax(uid)]
    if not handlers:
        raise NotImplementedError(f"no pixel data handler supports transfer syntax {uid}")
    return _Decoder(handlers)


def pixel_array(ds: Any, index: int | None = None):
    """The decoded pixels of ``ds`` (frame ``index`` of a multi-frame image), as pydicom 3's ``pixel_array``:
    YCbCr (``YBR_FULL``, ``YBR_FULL_422``) converted to RGB, which pydicom 2 leaves to the caller."""
    arr = ds.pixel_array
    arr = arr if index is None else arr[index]
    pi = str(ds.get("PhotometricInterpretation", ""))
    if pi in ("YBR_FULL", "YBR_FULL_422") and arr.ndim >= 3 and arr.shape[-1] == 3:
        arr = convert_color_space(arr, pi, "RGB")
    return arr
