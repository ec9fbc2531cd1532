"""MONAI Label: classification answers that carry each class's call. Runs inside the MONAI Label environment.

MONAI Label's bundle infer task answers a classification request with one ``{"idx", "label", "score"}`` entry per
class (the bundle's post-processed probability: temperature-scaled, see ``medplugin.transforms.Temperatured``).
:class:`DecisionInferTask` adds to each entry the threshold of the model's operating point (chosen on validation at
the end of training, ``models/model.json``) and the call made there (:func:`medplugin.metrics.stored.add_calls`);
``model.json`` is read for every answer, so a model trained through ``/train`` answers with its own points.
:class:`DecisionAppMixin` makes the app's classification bundles use it.
"""

from __future__ import annotations

import logging
import os

import torch
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

from medplugin.metrics.stored import add_calls

logger = logging.getLogger(__name__)


class DecisionInferTask(BundleInferTask):
    """The stock bundle infer task; a classification answer's entries get ``threshold`` and ``call``."""

    def writer(self, data, extension=None, dtype=None):
        pred = data.get("pred")
        if self.type == InferType.CLASSIFICATION and isinstance(pred, torch.Tensor) and not hasattr(pred, "array"):
            # MONAI Label's ClassificationWriter logs ``pred.array`` (a MetaTensor's); a bundle whose post-processing
            # ends with plain tensors (knee: EnsureTyped track_meta false) would fail there
            data["pred"] = MetaTensor(pred)
        result_file, result = super().writer(data, extension, dtype)
        if self.type == InferType.CLASSIFICATION and isinstance(result, dict) and "prediction" in result:
            model_json = os.path.join(os.path.dirname(self.path[0] if isinstance(self.path, list) else self.path),
                                      "model.json")
            if os.path.isfile(model_json):
                result["prediction"] = add_calls(result["prediction"], model_json)
            else:  # an untrained bundle's weights: no operating points to call at
                logger.warning("%s: not found, the answer carries no calls", model_json)
        return result_file, result


class DecisionAppMixin:
    """Serves every classification bundle of a MONAI Label bundle app with :class:`DecisionInferTask`. Put it
    before the stock app class among the app class's bases."""

    def init_infers(self):
        infers = dict(super().init_infers() or {})
        for name, task in infers.items():
            if type(task) is BundleInferTask and task.type == InferType.CLASSIFICATION:
                infers[name] = DecisionInferTask(task.bundle_path, self.conf)
                logger.info("+++ %s answers with each class's call at its operating point (model.json)", name)
        return infers
