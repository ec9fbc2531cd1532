"""MONAI Label: classification answers that carry each class's call. Runs inside the MONAI Label environment.

MONAI Label's bundle infer task answers a classification request with one ``{"idx", "label", "score"}`` entry per
class (the bundle's post-processed probability: temperature-scaled, see ``medplugin.transforms.Temperatured``).
:class:`DecisionInferTask` adds to each entry the threshold of the model's operating point (chosen on validation at
the end of training, ``models/model.json``) and the call made there (:func:`medplugin.metrics.stored.add_calls`);
``model.json`` is read for every answer, so a model trained through ``/train`` answers with its own points.
The answer also carries the input gate's verdict, as predictions.csv and the SR do: ``in_scope``,
``out_of_scope_reason`` and ``ood_score``, from the bundle's ``scope`` (DICOM header and content rules, on the
request's source file: the DICOM instance a DICOMweb series was downloaded as, not MONAI Label's NIfTI) and the
Mahalanobis score of the network's pooled features from the answer's own forward pass. Under ``gate: refuse`` an
out-of-scope input gets no scores (``prediction`` empty, ``refused`` true).
:class:`DecisionAppMixin` makes the app's classification bundles use it.
"""

from __future__ import annotations

import logging
import os

import torch
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

from medplugin.handlers.dicom import dicom_sources
from medplugin.metrics.stored import add_calls
from medplugin.tools.monailabel_dicom import SERIES_KEY  # a DICOMweb request's downloaded series

logger = logging.getLogger(__name__)

GATE_KEY = "medplugin_gate"  # the request data's verdict of the input gate, from run_inferer to the writer


def gate_source(data: dict, spatial_dims: int) -> str:
    """The file the gate judges for a request: a DICOMweb series' downloaded instances (its one instance for a 2-D
    model), else the request's image path."""
    series = data.get(SERIES_KEY)
    if isinstance(series, str) and os.path.isdir(series):
        files = dicom_sources(series) or []
        return files[0] if spatial_dims == 2 and len(files) == 1 else series
    return str(data.get("image_path") or "")


class DecisionInferTask(BundleInferTask):
    """The stock bundle infer task; a classification answer's entries get ``threshold`` and ``call``."""

    def _input_gate(self):
        """The bundle's input gate (``scope``, ``gate``, the model's OOD statistics), or ``None`` without a scope."""
        from medplugin.handlers.gate import InputGateHandler

        if self.bundle_config.get("scope") is None:
            return None
        scope = self.bundle_config.get_parsed_content("scope")
        policy = self.bundle_config.get_parsed_content("gate") if self.bundle_config.get("gate") else "warn"
        ckpt_dir = os.path.dirname(self.path[0] if isinstance(self.path, list) else self.path)
        handler = InputGateHandler(scope, policy, ckpt_dir, spatial_dims=int((scope.get("image") or {}).get(
            "spatial_dims", 2)))
        handler.start()
        return handler

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        handler = self._input_gate() if self.type == InferType.CLASSIFICATION else None
        if handler is None:
            return super().run_inferer(data, convert_to_batch, device)
        from medplugin.gate import PooledFeatures

        capture = None
        if handler.gate.ood is not None:
            try:  # the network MONAI Label runs next (cached per device): its pooled features of this forward pass
                capture = PooledFeatures(self._get_network(device, data), handler.gate.ood.feature_layer)
            except ValueError as e:
                logger.warning("input gate: no out-of-distribution score (%s)", e)
        if capture is None:
            data = super().run_inferer(data, convert_to_batch, device)
        else:
            with capture:
                data = super().run_inferer(data, convert_to_batch, device)
        features = capture.features[0] if capture is not None and capture.features is not None else None
        data[GATE_KEY] = handler.check(gate_source(data, handler.spatial_dims), features=features)
        return data

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
        verdict = data.get(GATE_KEY)
        if verdict is not None and isinstance(result, dict):
            result.update({"in_scope": verdict.in_scope, "out_of_scope_reason": verdict.out_of_scope_reason,
                           "ood_score": verdict.ood_score, "refused": verdict.refused})
            if verdict.refused:  # gate: refuse: an input the model was not made for gets no scores
                result["prediction"] = []
            if not verdict.in_scope:
                logger.warning("input out of scope: %s", verdict.out_of_scope_reason)
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
