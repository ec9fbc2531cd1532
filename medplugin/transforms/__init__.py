"""MONAI-style transforms (array and dictionary pairs) grouped by operation, and the per-task presets.

``medplugin/transforms/<operation>/{array,dictionary}.py`` as in MONAI: ``calibration`` (temperature scaling
of logits), ``crop`` (to a mask's box, to a fundus field of view), ``segment`` (with a segmentation bundle's
trained network), ``intensity``, ``lesion`` (fundus lesion candidates), ``labels`` (labels and masks from
files), ``spatial`` (voxel grids), ``fast`` (the uint8 cache path and batched augmentation), ``io`` (loading);
``presets`` holds each task's preprocessing.
Everything each of them exports is exported here, flat: bundles name ``medplugin.transforms.Foo``.
"""

from medplugin.transforms import calibration, crop, fast, intensity, io, labels, lesion, presets, segment, spatial
from medplugin.transforms.calibration import *  # noqa: F403
from medplugin.transforms.crop import *  # noqa: F403
from medplugin.transforms.fast import *  # noqa: F403
from medplugin.transforms.intensity import *  # noqa: F403
from medplugin.transforms.io import *  # noqa: F403
from medplugin.transforms.labels import *  # noqa: F403
from medplugin.transforms.lesion import *  # noqa: F403
from medplugin.transforms.presets import *  # noqa: F403
from medplugin.transforms.segment import *  # noqa: F403
from medplugin.transforms.spatial import *  # noqa: F403

__all__ = [
    *calibration.__all__,
    *crop.__all__,
    *fast.__all__,
    *intensity.__all__,
    *io.__all__,
    *labels.__all__,
    *lesion.__all__,
    *presets.__all__,
    *segment.__all__,
    *spatial.__all__,
]
