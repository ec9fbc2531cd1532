"""Per-frame values of enhanced (multi-frame layout) DICOM objects.

What a classic image keeps at the top level of its header (e.g. *Pixel Spacing*), an object of the enhanced
multi-frame layout (Ophthalmic Tomography, Enhanced CT/MR, ...) keeps in its functional groups: in the *Shared
Functional Groups Sequence* when every frame has the same value, else in each frame's item of the *Per-frame
Functional Groups Sequence* (PS3.3 C.7.6.16). pydicom only, so that the DICOM readers and the result writers
can both use it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["functional_group_value", "pixel_spacing_value"]


def functional_group_value(ds: Any, macro: str, keyword: str, frame: int = 1) -> Any:
    """``keyword`` of the functional group macro ``macro`` (e.g. ``PixelMeasuresSequence``) for one frame.

    The shared functional groups are read first, then the frame's own item of the per-frame functional groups.

    Args:
        ds: a pydicom dataset.
        macro: the functional group's sequence keyword, e.g. ``PixelMeasuresSequence``.
        keyword: the element inside it, e.g. ``PixelSpacing``.
        frame: the frame, counted from 1 as DICOM counts them.

    Returns:
        the element's value, or ``None`` when neither the shared nor the frame's groups hold it.
    """
    for groups, index in (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", frame - 1)):
        items = ds.get(groups)
        if not items or not 0 <= index < len(items):
            continue
        inner = items[index].get(macro)
        if not inner:
            continue
        value = inner[0].get(keyword)
        if value is not None and value != "":
            return value
    return None


def pixel_spacing_value(ds: Any, frame: int = 1) -> Any:
    """The *Pixel Spacing* of ``frame``: the top-level element of a classic image, else the Pixel Measures
    functional group of an enhanced one (shared first, then the frame's own); ``None`` when there is none.
    The value is returned as stored: callers check that it is two positive numbers."""
    value = ds.get("PixelSpacing")
    if value is not None and value != "":
        return value
    return functional_group_value(ds, "PixelMeasuresSequence", "PixelSpacing", frame)
