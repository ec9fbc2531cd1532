"""The gate's header and content checks as a MONAI transform pair, placed right after loading (before any
intensity normalisation): ``ScopeCheck`` returns the verdict, ``ScopeCheckd`` writes it into the data dict."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from medplugin.gate.gate import GateResult, InputGate
from medplugin.gate.spec import read_header

__all__ = ["ScopeCheck", "ScopeCheckd"]


def _source_path(image: Any) -> str | None:
    meta = getattr(image, "meta", None) or {}
    path = meta.get("filename_or_obj")
    return str(path) if isinstance(path, (str, os.PathLike)) and path else None


class ScopeCheck(Transform):
    """Check one loaded image against a declared scope (:class:`medplugin.gate.ScopeSpec` rules).

    Args:
        scope: the config's ``scope`` mapping (``dicom`` header rules, ``image`` content rules).
        policy: ``"warn"`` or ``"refuse"`` (recorded in the verdict).
    """

    def __init__(self, scope: Mapping[str, Any] | None = None, policy: str = "warn") -> None:
        self.gate = InputGate(scope, policy=policy)

    def __call__(self, img: Any, path: str | os.PathLike | None = None) -> GateResult:
        """The verdict for ``img`` (channel-first); the DICOM header is read from ``path`` or, when ``None``,
        from the image's ``filename_or_obj`` metadata (MONAI's loaders set it)."""
        path = path or _source_path(img)
        header = read_header(path) if path and os.path.isfile(path) else None
        return self.gate.check(header=header, image=img)


class ScopeCheckd(MapTransform):
    """Dictionary wrapper of :class:`ScopeCheck`: sets ``in_scope`` (bool) and ``out_of_scope_reason`` (str).

    Args:
        keys: the image key (one).
        scope: the config's ``scope`` mapping.
        policy: ``"warn"`` or ``"refuse"``; under ``refuse`` an out-of-scope item also gets ``refused: True``.
        path_key: a key holding the source path, when the image carries no ``filename_or_obj``.
        allow_missing_keys: as MONAI's.
    """

    def __init__(self, keys: KeysCollection, scope: Mapping[str, Any] | None = None, policy: str = "warn",
                 path_key: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"ScopeCheckd checks one image key, got {list(self.keys)}.")
        self.checker = ScopeCheck(scope, policy)
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d.get(self.path_key) if self.path_key else None
            result = self.checker(d[key], path)
            d.update(result.as_row())
            d["refused"] = result.refused
        return d
