"""Deprecated: the old home of the lung segmentation preset, kept only because the lung bundle's ``evaluate.yaml``
imports ``medplugin.transforms.chest`` and names ``medplugin.transforms.chest.lung_segmentation_preprocessing``.
Remove once that config names ``medplugin.transforms.lung_segmentation_preprocessing``."""

from medplugin.transforms.presets.lung import lung_segmentation_preprocessing

__all__ = ["lung_segmentation_preprocessing"]
