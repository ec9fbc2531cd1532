"""Deprecated: the old home of the knee classification preset, kept only because the knee classification
bundle's ``evaluate.yaml`` names ``medplugin.transforms.knee.classification.knee_classification_preprocessing``.
Remove once that config names ``medplugin.transforms.knee_classification_preprocessing``."""

from medplugin.transforms.presets.knee import knee_classification_preprocessing

__all__ = ["knee_classification_preprocessing"]
