"""Datasets for batch jobs that must go on when one input is bad."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from monai.data import Dataset, MetaTensor

from medplugin.errors import BadInputError

__all__ = ["TolerantDataset", "failure_message"]

logger = logging.getLogger(__name__)


def failure_message(entry: dict, error: Exception, image_key: str = "image") -> str:
    """The error row's message for an item whose loading failed (logged as a warning).

    The first :class:`BadInputError` in ``error``'s cause chain (``"path: reason"``), else
    ``"<path>: <type>: <message>"``; only its first line.

    Args:
        entry: the datalist entry (its ``path``, else its ``image_key``, names the input).
        error: what loading raised.
        image_key: key of the image.
    """
    cause = error
    while cause.__cause__ is not None and not isinstance(cause, BadInputError):
        cause = cause.__cause__
    if isinstance(cause, BadInputError):
        msg = str(cause)
    else:
        msg = f"{entry.get('path', entry.get(image_key))}: {type(error).__name__}: {error}"
    msg = msg.splitlines()[0]
    logger.warning("skipping input: %s", msg)
    return msg


class _Refused(Exception):
    """An entry that arrived with its ``error`` already set (the indexer refused it)."""


class TolerantDataset(Dataset):
    """A MONAI ``Dataset`` whose items never raise: a failing item becomes an error record.

    An item whose transform fails returns ``{image_key: zeros(fallback_shape), "error": message, ...}`` with
    the entry's string fields (``path``, ``name``) kept, so a batch job writes an error row for it and goes on
    with the rest. An entry that already carries an ``error`` (an indexer refused it) is not read: its record
    carries that error. Good items get ``"error": ""``. Images are returned without MONAI metadata so good and
    bad items collate together; with ``keep_meta`` every image is a ``MetaTensor`` (a failed item's with only
    ``filename_or_obj``), so good items keep the record of their transforms (for MONAI's ``Invertd``).

    Args:
        data: datalist entries.
        transform: the preprocessing.
        fallback_shape: shape of the placeholder image, e.g. ``[1, 224, 224]``.
        image_key: key of the image.
        fallback: extra keys a failed item gets so it collates with good ones, e.g. ``{"geometry": [0] * 12}``
            (values are turned into tensors).
        keep_meta: keep images as ``MetaTensor`` s (see above).
    """

    def __init__(self, data: Sequence[dict], transform: Callable | None, fallback_shape: Sequence[int],
                 image_key: str = "image", fallback: dict | None = None, keep_meta: bool = False) -> None:
        super().__init__(data=data, transform=transform)
        self.fallback_shape = tuple(int(s) for s in fallback_shape)
        self.image_key = image_key
        self.fallback = dict(fallback or {})
        self.keep_meta = bool(keep_meta)

    def _transform(self, index: int) -> dict:
        entry = self.data[index]
        try:
            if entry.get("error"):  # refused when indexed (e.g. not an image): its row, unread
                raise _Refused(entry["error"])
            out = dict(super()._transform(index))
            out["error"] = ""
        except Exception as e:  # every failure becomes a per-item error row
            out = {k: v for k, v in entry.items() if isinstance(v, str)}
            out[self.image_key] = torch.zeros(self.fallback_shape)
            out["error"] = str(e) if isinstance(e, _Refused) else failure_message(entry, e, self.image_key)
            out.update({k: torch.as_tensor(v) for k, v in self.fallback.items()})
        img = out[self.image_key]
        if hasattr(img, "as_tensor") and not (self.keep_meta and not out["error"]):
            out[self.image_key] = img.as_tensor()
        if tuple(out[self.image_key].shape) != self.fallback_shape and not out["error"]:
            out[self.image_key] = torch.zeros(self.fallback_shape)
            out["error"] = (f"{entry.get('path')}: preprocessing gave shape {tuple(img.shape)}, "
                            f"expected {self.fallback_shape}")
        if self.keep_meta and not isinstance(out[self.image_key], MetaTensor):
            out[self.image_key] = MetaTensor(out[self.image_key], meta={"filename_or_obj": str(entry.get("path", ""))})
        return out
