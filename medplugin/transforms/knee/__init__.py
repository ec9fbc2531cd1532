"""Knee MRI loading (:class:`LoadKneeVolume`); the other knee transforms are grouped by operation.

``CheckGeometryd`` is re-exported here only for the ``evaluate.yaml`` of ``knee_mri_segmentation``, which names
``medplugin.transforms.knee.CheckGeometryd``: deprecated, remove once that config names
``medplugin.transforms.CheckGeometryd``.
"""

from medplugin.transforms.knee.array import LoadKneeVolume
from medplugin.transforms.knee.dictionary import LoadKneeVolumed, LoadKneeVolumeD, LoadKneeVolumeDict
from medplugin.transforms.spatial.dictionary import CheckGeometryd  # deprecated alias, see the module docstring

__all__ = ["CheckGeometryd", "LoadKneeVolume", "LoadKneeVolumed", "LoadKneeVolumeD", "LoadKneeVolumeDict"]
