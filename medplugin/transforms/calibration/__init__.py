"""Calibration: temperature scaling of logits with the temperature stored beside the trained weights."""

from medplugin.transforms.calibration.array import Temperature
from medplugin.transforms.calibration.dictionary import TemperatureD, Temperatured, TemperatureDict

__all__ = ["Temperature", "Temperatured", "TemperatureD", "TemperatureDict"]
