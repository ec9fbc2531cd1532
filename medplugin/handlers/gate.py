"""The input gate in the bundles: checking every inference input (:class:`InputGateHandler`) and fitting the
out-of-distribution statistics at the end of training (:class:`OODStatisticsFitter`)."""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from medplugin.errors import BadInputError
from medplugin.gate import GATE_POLICIES, GateResult, InputGate, PooledFeatures, fit_ood_statistics, load_for_gate
from medplugin.handlers._engine import is_main_process, iter_samples
from medplugin.utils import write_json

__all__ = ["InputGateHandler", "OODStatisticsFitter", "read_model_json", "model_companions"]

logger = logging.getLogger(__name__)

GATE_KEYS = ("in_scope", "out_of_scope_reason", "ood_score", "refused")
"""What :class:`InputGateHandler` adds to each output item (predictions.csv writes the first two)."""


def read_model_json(ckpt_dir: str | os.PathLike | None, filename: str = "model.json") -> dict:
    """``ckpt_dir/model.json`` parsed, or ``{}`` when there is none."""
    if ckpt_dir is None:
        return {}
    path = Path(ckpt_dir) / filename
    return json.loads(path.read_text()) if path.is_file() else {}


def model_companions(model_pt: str | os.PathLike) -> list[Path]:
    """The files that travel with ``model_pt`` when a model is copied: its ``model.json`` and the OOD statistics
    it names (``ood.npz``), those that exist."""
    folder = Path(model_pt).parent
    meta = read_model_json(folder)
    names = ["model.json"] if meta else []
    names += [meta["ood"]["file"]] if isinstance(meta.get("ood"), dict) and meta["ood"].get("file") else []
    return [folder / n for n in names if (folder / n).is_file()]


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    for attr in ("module", "_orig_mod"):  # DDP / DataParallel, torch.compile
        inner = getattr(network, attr, None)
        if isinstance(inner, torch.nn.Module):
            return _unwrap(inner)
    return network


class InputGateHandler:
    """Check every inference input against the bundle's declared scope before its probabilities are trusted.

    Per item (:class:`medplugin.gate.InputGate`): the DICOM header rules and the file's dimensions (from the
    path, also for an input its reader refused), the content rules on the file as it is (its own channels and
    values, :func:`medplugin.gate.load_for_gate`), and, where ``model.json`` holds OOD statistics (written at the
    end of training by :class:`OODStatisticsFitter`), the Mahalanobis score of the network's pooled features
    captured during the evaluator's own forward pass (:class:`medplugin.gate.PooledFeatures`, hook removed at the
    end). The verdict goes into the item's output as ``in_scope`` (``None`` for an unreadable input that breaks
    no rule), ``out_of_scope_reason``, ``ood_score`` and ``refused`` (out of scope under ``gate: refuse``), read
    by the prediction writer (columns), the CAM saver and the DICOM result writer. Attach it before them.

    Args:
        scope: the bundle's ``scope`` mapping (:class:`medplugin.gate.ScopeSpec`).
        policy: ``"warn"`` (out-of-scope inputs still get probabilities, flagged) or ``"refuse"``.
        ckpt_dir: the folder of ``model.pt`` and ``model.json`` (and ``ood.npz``).
        network: the classifier whose pooled features are scored; ``None`` (or a network without a
            classification layer, e.g. ONNX Runtime) leaves the OOD check out.
        spatial_dims: 2 or 3: how inputs are read for the content rules.
        path_key: batch key of the input's path.
        enabled: ``False`` turns the gate off (no columns are filled).
    """

    def __init__(self, scope: Mapping[str, Any] | None, policy: str = "warn", ckpt_dir: str | None = None,
                 network: torch.nn.Module | None = None, spatial_dims: int = 2, path_key: str = "path",
                 enabled: bool = True) -> None:
        if policy not in GATE_POLICIES:
            raise ValueError(f"gate must be one of {GATE_POLICIES}, got {policy!r}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        self.scope = dict(scope or {})
        InputGate(self.scope, policy=policy)  # a bad scope fails when the config is parsed, naming the key
        self.policy, self.ckpt_dir, self.network = policy, ckpt_dir, network
        self.spatial_dims, self.path_key, self.enabled = int(spatial_dims), path_key, bool(enabled)
        self.gate: InputGate | None = None
        self._capture: PooledFeatures | None = None
        self.counts = {"checked": 0, "out_of_scope": 0}

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.finish)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    def _on_exception(self, engine: Engine, e: BaseException) -> None:
        """Remove the hook and re-raise: ignite swallows an exception once any handler is registered for it."""
        self.remove()
        raise e

    def start(self, engine: Engine | None = None) -> None:
        """Build the gate (OOD statistics from ``model.json``) and start capturing pooled features."""
        self.gate = InputGate.from_config(self.scope, self.policy, read_model_json(self.ckpt_dir), self.ckpt_dir)
        self.counts = {"checked": 0, "out_of_scope": 0}
        self.remove()
        if self.gate.ood is not None and isinstance(self.network, torch.nn.Module):
            try:
                self._capture = PooledFeatures(self.network, self.gate.ood.feature_layer).__enter__()
            except ValueError as e:  # the network has no such layer: no OOD scores, the other checks still run
                logger.warning("input gate: no out-of-distribution score (%s)", e)
        elif self.gate.ood is not None:
            logger.info("input gate: the network is not a PyTorch module (ONNX Runtime?): no out-of-distribution "
                        "score")

    def remove(self) -> None:
        """Remove the feature hook (idempotent): the network is left as it was found."""
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def __call__(self, engine: Engine) -> None:
        samples = list(iter_samples(engine))
        feats = self._capture.features if self._capture is not None else None
        if feats is not None and len(feats) != len(samples):
            logger.warning("input gate: %d feature rows for %d items: OOD scores skipped", len(feats), len(samples))
            feats = None
        for i, (b, o) in enumerate(samples):
            result = self.check(str(b.get(self.path_key) or ""), bool(b.get("error")),
                                None if feats is None else feats[i])
            unreadable = bool(b.get("error")) and result.in_scope
            o.update({"in_scope": None if unreadable else result.in_scope,
                      "out_of_scope_reason": result.out_of_scope_reason,
                      "ood_score": result.ood_score, "refused": result.refused})
            self.counts["checked"] += 1
            self.counts["out_of_scope"] += int(not result.in_scope)
        if self._capture is not None:
            self._capture.features = None

    def check(self, path: str, error: bool = False, features: torch.Tensor | None = None) -> GateResult:
        """The verdict on one input (``error``: its reader failed, so only its header is judged)."""
        if self.gate is None:
            self.start()
        image = None if error or not path else load_for_gate(path, self.spatial_dims)
        result = self.gate.check_file(path, image=image) if path else self.gate.check(image=image)
        if features is not None and not error:
            result = result.merge(self.gate.check(features=features.float().cpu().numpy()))
        return result

    def finish(self, engine: Engine | None = None) -> None:
        self.remove()
        logger.info("input gate (%s): %d of %d input(s) out of scope", self.policy, self.counts["out_of_scope"],
                    self.counts["checked"])


class OODStatisticsFitter:
    """At the end of training, on rank 0: fit the out-of-distribution statistics of the best model.

    The weights in ``ckpt_dir/model.pt`` (the best model, not the last epoch's) go into a copy of the network;
    its pooled features of the training images (deterministic preprocessing, no augmentation) give the
    Mahalanobis statistics (Lee et al. 2018, :func:`medplugin.gate.fit_ood_statistics`; class-conditional with
    class-index labels, one pooled Gaussian for multi-label models or when a class has no training image) and
    those of the validation images the threshold (the 99th percentile, none below 19 validation images:
    :meth:`medplugin.gate.MahalanobisOOD.calibrate`). The arrays go to ``ckpt_dir/ood.npz`` and the ``"ood"``
    block into ``model.json`` by read-modify-write (atomic), so the keys other handlers recorded stay.

    Args:
        network: the trained network (DDP-wrapped is fine; it is not changed).
        ckpt_dir: the folder of ``model.pt`` and ``model.json``.
        train_data: the training entries (datalist dicts).
        val_data: the validation entries.
        transform: the deterministic preprocessing (the inference preprocessing).
        class_names: recorded with class-conditional means.
        label_key: the entries' label key (``None``: one pooled Gaussian).
        percentile: the validation percentile of the threshold.
        batch_size: images per forward pass.
        num_workers: DataLoader workers.
        device: where to run the network.
        enabled: ``False`` turns the fit off.
    """

    def __init__(self, network: torch.nn.Module, ckpt_dir: str, train_data: Sequence[dict], val_data: Sequence[dict],
                 transform: Callable | None, class_names: Sequence[str] | None = None, label_key: str | None = "label",
                 percentile: float = 99.0, batch_size: int = 16, num_workers: int = 0,
                 device: str | torch.device = "cpu", enabled: bool = True) -> None:
        self.network, self.ckpt_dir = network, Path(ckpt_dir)
        self.train_data, self.val_data, self.transform = list(train_data), list(val_data), transform
        self.class_names = list(class_names) if class_names is not None else None
        self.label_key, self.percentile = label_key, float(percentile)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.device, self.enabled = torch.device(device), bool(enabled)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self)

    def _loader(self, data: Sequence[dict]):
        from monai.data import DataLoader, Dataset

        return DataLoader(Dataset(list(data), self.transform), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)

    def __call__(self, engine: Engine | None = None) -> dict | None:
        """Fit, write ``ood.npz`` and the ``model.json`` block; returns the block (``None`` when not fitted)."""
        if not is_main_process():
            return None
        from medplugin.networks.pretrained import read_state_dict

        model_pt, meta_path = self.ckpt_dir / "model.pt", self.ckpt_dir / "model.json"
        if not model_pt.is_file() or not meta_path.is_file():
            logger.warning("no OOD statistics: %s or %s is missing", model_pt, meta_path.name)
            return None
        if not self.train_data or not self.val_data:
            logger.warning("no OOD statistics: %s split is empty", "the training" if not self.train_data else
                           "the validation")
            return None
        net = copy.deepcopy(_unwrap(self.network))
        net.load_state_dict(read_state_dict(model_pt))
        net.to(self.device)
        train, val = self._loader(self.train_data), self._loader(self.val_data)
        try:
            try:
                block = fit_ood_statistics(net, train, val, self.ckpt_dir, label_key=self.label_key,
                                           classes=self.class_names, percentile=self.percentile, device=self.device)
            except ValueError as e:  # e.g. a class without training images: one pooled Gaussian instead
                if self.label_key is None:
                    raise
                logger.warning("OOD statistics: %s; fitting one Gaussian to all training features instead", e)
                block = fit_ood_statistics(net, train, val, self.ckpt_dir, label_key=None,
                                           percentile=self.percentile, device=self.device)
        except Exception as e:  # the model is trained and saved: a failed fit costs the gate's OOD check, not the run
            cause = e  # the reason, not MONAI's "applying transform ..." wrapper: the first BadInputError, or the root
            while cause.__cause__ is not None and not isinstance(cause, BadInputError):
                cause = cause.__cause__
            logger.warning("no OOD statistics for %s: %s (the input gate keeps its header and content checks; "
                           "inference reports no out-of-distribution score)", model_pt, str(cause).splitlines()[0])
            return None
        meta = json.loads(meta_path.read_text())
        meta["ood"] = block
        write_json(meta_path, meta)
        threshold = block.get("threshold")
        logger.info("OOD statistics of %s: %d training and %d validation images, threshold %s (ood.npz, model.json)",
                    model_pt.name, block["n_train"], block["n_val"],
                    f"{threshold:.1f}" if threshold is not None else f"none ({block.get('threshold_note')})")
        return block
