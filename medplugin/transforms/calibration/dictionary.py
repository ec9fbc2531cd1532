"""Dictionary twin of :mod:`medplugin.transforms.calibration.array`."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from medplugin.transforms.calibration.array import Temperature

__all__ = ["Temperatured", "TemperatureD", "TemperatureDict"]


class Temperatured(MapTransform):
    """Dictionary twin of :class:`~medplugin.transforms.calibration.array.Temperature`: the logits under ``keys``
    divided by the model's temperature (before the activation of a bundle's post-processing).

    Args:
        keys: keys of the logits (usually ``"pred"``).
        model_json: the trained model's ``model.json``.
        temperature: a fixed temperature instead of ``model_json``'s.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = Temperature.backend

    def __init__(self, keys: KeysCollection, model_json: str | os.PathLike | None = None,
                 temperature: float | list[float] | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = Temperature(model_json, temperature)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


TemperatureD = TemperatureDict = Temperatured
