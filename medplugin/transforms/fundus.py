"""Deprecated: the old home of the fundus preset, kept only because the fundus bundle's ``evaluate.yaml`` imports
``medplugin.transforms.fundus`` and names its ``FundusPreprocessd``, ``fundus_classification_preprocessing`` and
``fundus_normalization``. Remove once that config names them from ``medplugin.transforms``."""

from medplugin.transforms.lesion.dictionary import FundusPreprocessd
from medplugin.transforms.presets.fundus import fundus_classification_preprocessing, fundus_normalization

__all__ = ["FundusPreprocessd", "fundus_classification_preprocessing", "fundus_normalization"]
