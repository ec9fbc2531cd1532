"""Deprecated: the old home of the chest X-ray preset, kept only because the chest bundle's ``evaluate.yaml``
imports ``medplugin.transforms.chest_classification`` and names its ``chest_xray_preprocessing``. Remove once
that config names ``medplugin.transforms.chest_xray_preprocessing``."""

from medplugin.transforms.presets.chest import chest_xray_preprocessing

__all__ = ["chest_xray_preprocessing"]
