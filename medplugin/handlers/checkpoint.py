"""Saving the best model with what it needs to be used again, and loading it back safely."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import shlex
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from medplugin.errors import BadInputError
from medplugin.handlers._engine import is_main_process
from medplugin.networks.pretrained import read_state_dict
from medplugin.utils import atomic_write, write_json

__all__ = ["BestModelSaver", "ModelLoader", "patient_digest"]

logger = logging.getLogger(__name__)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") and isinstance(network.module, torch.nn.Module) else network


class BestModelSaver:
    """Save the network's state dict to ``ckpt_dir/model.pt`` whenever the key metric improves (or equals the best):
    rises (``mode="max"``) or falls (``mode="min"``).

    Written atomically (temporary file, then rename), by rank 0 only, with ``model.json`` beside it that
    records what the weights need (architecture, input size, channels, class names, normalisation), where the
    training started from (the network's ``pretrained_source``, when it has one) and the metric that chose them.
    A ``model.pt`` that existed before this run is kept as ``model.<its modification time>.pt``, never
    overwritten.

    Args:
        network: the trained network (DDP-wrapped is fine).
        ckpt_dir: destination folder.
        key_metric: name in ``engine.state.metrics``.
        model_meta: what to record in ``model.json``.
        filename: the weights file name.
        greater_or_equal: a later evaluation whose key metric equals the best so far replaces the saved model
            (as MONAI's ``key_metric_greater_or_equal``; in ``min`` mode, a loss equal to the lowest so far). On a
            small validation set a threshold-free metric such as AUC often saturates (1.0) epochs before the
            model is done (an early model ranks every case right but calls them all one class): the later,
            longer-trained model is kept. ``False`` keeps the first.
        mode: ``"max"`` (higher is better: accuracy, AUC) or ``"min"`` (lower is better: a validation loss, as
            CheXNet chose its model by the lowest validation loss; ignite's ``Checkpoint`` does the same with a
            negative ``score_sign``).

    An undefined key metric (NaN, e.g. AUC on a validation split with one class) never replaces a defined
    one; while no evaluation of the run has given a defined value, the latest model is saved (with
    ``null`` for the metric in ``model.json``) and a warning says so, so a run always leaves a model.
    """

    def __init__(self, network: torch.nn.Module, ckpt_dir: str, key_metric: str, model_meta: dict | None = None,
                 filename: str = "model.pt", greater_or_equal: bool = True, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' (higher {key_metric} is better) or 'min' (lower is better), "
                             f"got {mode!r}.")
        self.network = network
        self.path = Path(ckpt_dir) / filename
        self.key_metric = key_metric
        self.model_meta = dict(model_meta or {})
        self.greater_or_equal = bool(greater_or_equal)
        self.mode = mode
        self._unset = -math.inf if mode == "max" else math.inf  # the best before any defined value
        self.best = self._unset
        self._checked_previous = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def state_dict(self) -> dict:
        """The best metric so far (and whether an earlier ``model.pt`` was set aside), for resuming a run."""
        return {"best": self.best, "checked_previous": self._checked_previous}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (``TrainingCheckpoint`` calls it when a run resumes)."""
        self.best = float(state["best"])
        self._checked_previous = bool(state["checked_previous"])

    def _keep_previous(self) -> None:
        self._checked_previous = True
        if self.path.exists():
            stamp = datetime.datetime.fromtimestamp(self.path.stat().st_mtime).strftime("%Y%m%d_%H%M%S")
            kept = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
            os.replace(self.path, kept)
            meta = self.path.with_suffix(".json")
            if meta.exists():
                os.replace(meta, kept.with_suffix(".json"))
            logger.info("kept the earlier %s as %s", self.path.name, kept.name)

    def __call__(self, engine: Engine) -> None:
        if self.key_metric not in engine.state.metrics:
            raise KeyError(f"key metric {self.key_metric!r} not in {sorted(engine.state.metrics)}.")
        value = float(engine.state.metrics[self.key_metric])
        undefined = math.isnan(value)
        if undefined:  # e.g. AUC on a validation split holding one class only
            logger.warning("%s is undefined (NaN) at epoch %s (a validation split with one class?)%s",
                           self.key_metric, engine.state.epoch,
                           "; keeping the latest model until it is defined" if self.best == self._unset else "")
            improved = self.best == self._unset  # no defined value yet: a run always leaves a model
        elif self.mode == "max":
            improved = value >= self.best if self.greater_or_equal else value > self.best
        else:
            improved = value <= self.best if self.greater_or_equal else value < self.best
        if not improved or not is_main_process():
            if not undefined:
                self.best = max(self.best, value) if self.mode == "max" else min(self.best, value)
            return
        tie = not undefined and value == self.best  # greater_or_equal: the later epoch replaces the earlier one
        if not undefined:
            self.best = value
        if not self._checked_previous:
            self._keep_previous()
        state = {k: v.detach().cpu() for k, v in _unwrap(self.network).state_dict().items()}
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))
        # where the training started from (``pretrained_source`` of medplugin's network builders)
        start = getattr(_unwrap(self.network), "pretrained_source", None)
        write_json(self.path.with_suffix(".json"), {**self.model_meta, **({"pretrained": start} if start else {}),
                                                   self.key_metric: None if undefined else value,
                                                   "saved": datetime.datetime.now().isoformat(timespec="seconds")})
        # the epoch the file holds (MONAI's "best value ... at epoch" names the first epoch of a tie)
        logger.info("saved %s, the network of epoch %s (%s = %.4f, the %s so far)%s", self.path, engine.state.epoch,
                    self.key_metric, value, "highest" if self.mode == "max" else "lowest",
                    "; equal to an earlier epoch's value: the file now holds this later epoch" if tie else "")


def patient_digest(datalist: dict, sections: tuple[str, ...] = ("training", "validation"),
                   patient_key: str = "patient_id") -> str:
    """A short SHA-256 digest of the distinct patients in ``sections`` of a datalist (by default the patients a
    model is trained and validated on), recorded in ``model.json`` under ``split``.

    Patients are the entries' ``patient_key`` values, or their image's file name when an entry has none (e.g.
    data sent by MONAI Label). Order and duplicates do not matter, nor does where the dataset lies on disk.

    Args:
        datalist: ``{"training": [...], "validation": [...], ...}``.
        sections: the parts whose patients are digested.
        patient_key: the entry key of the patient id.

    Returns:
        16 hexadecimal characters.
    """
    ids = set()
    for section in sections:
        for e in datalist.get(section) or []:
            pid = e.get(patient_key)
            ids.add(str(pid) if pid not in (None, "") else os.path.basename(str(e.get("image", ""))))
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


class ModelLoader:
    """Load ``model.pt`` into the network when the engine starts, refusing unsafe or mismatched files.

    Weights are read with ``torch.load(weights_only=True)``. When ``model.json`` sits beside them, every key of
    ``expected`` it also records must agree (e.g. a model trained at ``image_size`` 64 run at 224), with an
    error that says which override fixes it.

    ``split`` is compared by its ``patients`` digest (:func:`patient_digest` of the training and validation
    patients): an evaluation must compute the split the model was trained on, so that its test patients are
    none of the model's training patients. When the digests differ, the split settings (the other keys of
    ``split``, e.g. ``split_seed``, ``val_fraction``) that differ are named as overrides; settings that differ
    without changing the patients (e.g. ``split_seed`` under an official test list) are accepted.

    Args:
        network: the network to fill.
        path: the weights file.
        expected: the run's values of the recorded keys (``arch``, ``image_size``, ``class_names``, ``split``, ...).
    """

    def __init__(self, network: torch.nn.Module, path: str, expected: dict | None = None) -> None:
        self.network = network
        self.path = str(path)
        self.expected = dict(expected or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if not os.path.isfile(self.path):
            raise BadInputError(self.path, "no trained model here: train the bundle first, or set --ckpt_dir")
        meta_path = Path(self.path).with_suffix(".json")
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            diffs = {k: (meta[k], v) for k, v in self.expected.items()
                     if k != "split" and k in meta and _norm(meta[k]) != _norm(v)}
            if diffs:
                fixes, detail = _overrides(diffs)
                raise BadInputError(self.path,
                                    f"the model was trained with other settings ({detail}); run with {fixes}")
            _check_split(self.path, meta.get("split"), self.expected.get("split"))
        state = read_state_dict(self.path)
        try:
            _unwrap(self.network).load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise BadInputError(self.path, f"weights do not fit this network ({str(e).splitlines()[0]})") from e
        logger.info("loaded %s", self.path)


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _overrides(diffs: dict) -> tuple[str, str]:
    """(``--key value`` overrides giving the model's values, "key: model ... vs run ..." details); a list or dict
    value is quoted for the shell (``--views '["PA", "AP"]'``)."""
    fixes = " ".join(f"--{k} {shlex.quote(json.dumps(m)) if isinstance(m, (list, dict)) else json.dumps(m)}"
                     for k, (m, _) in diffs.items())
    detail = ", ".join(f"{k}: model {m!r} vs run {r!r}" for k, (m, r) in diffs.items())
    return fixes, detail


def _check_split(path: str, recorded, expected) -> None:
    """The run's patient split must be the model's (see :class:`ModelLoader`); nothing to check without both."""
    if not isinstance(recorded, dict) or not isinstance(expected, dict) or "patients" not in recorded:
        return
    if recorded["patients"] == expected.get("patients"):
        return
    diffs = {k: (recorded[k], v) for k, v in expected.items()
             if k != "patients" and k in recorded and _norm(recorded[k]) != _norm(v)}
    risk = "so this run's test patients may include patients the model was trained on"
    if diffs:
        fixes, detail = _overrides(diffs)
        raise BadInputError(path, f"the model was trained on another patient split ({detail}), {risk}; "
                                  f"run with {fixes}")
    raise BadInputError(path, f"the model's training and validation patients (digest {recorded['patients']}) are "
                              f"not those of this run's split (digest {expected.get('patients')}) although its "
                              f"split settings agree: the data differ from the training run's, {risk}; evaluate "
                              "on the data the model was trained on, or pass --datalist <the training run's "
                              "output_dir>/datalist.json")
