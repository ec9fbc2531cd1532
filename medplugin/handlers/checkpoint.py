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
from medplugin.handlers._engine import gather_samples, is_main_process, iter_samples
from medplugin.networks.pretrained import read_state_dict
from medplugin.utils import atomic_write, write_json

__all__ = ["BestModelSaver", "ModelLoader", "ValidationStatistics", "patient_digest"]

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
        statistics: a :class:`ValidationStatistics`: the saved model's temperature and operating points, fitted on
            the validation predictions that chose it, go into ``model.json`` with it.

    An undefined key metric (NaN, e.g. AUC on a validation split with one class) never replaces a defined
    one; while no evaluation of the run has given a defined value, the latest model is saved (with
    ``null`` for the metric in ``model.json``) and a warning says so, so a run always leaves a model.
    """

    def __init__(self, network: torch.nn.Module, ckpt_dir: str, key_metric: str, model_meta: dict | None = None,
                 filename: str = "model.pt", greater_or_equal: bool = True, mode: str = "max",
                 statistics: ValidationStatistics | None = None) -> None:
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
        self.statistics = statistics

    def attach(self, engine: Engine) -> None:
        if self.statistics is not None:
            self.statistics.attach(engine)
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
        # every rank takes part in gathering the validation predictions; rank 0 writes
        stats = self.statistics.fit(engine) if improved and self.statistics is not None else {}
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
                                                   **stats, self.key_metric: None if undefined else value,
                                                   "saved": datetime.datetime.now().isoformat(timespec="seconds")})
        # the epoch the file holds (MONAI's "best value ... at epoch" names the first epoch of a tie)
        logger.info("saved %s, the network of epoch %s (%s = %.4f, the %s so far)%s", self.path, engine.state.epoch,
                    self.key_metric, value, "highest" if self.mode == "max" else "lowest",
                    "; equal to an earlier epoch's value: the file now holds this later epoch" if tie else "")


class ValidationStatistics:
    """The temperature and operating points of the model :class:`BestModelSaver` saves, fitted on the validation
    predictions that chose it (issue 15: decisions chosen on validation, never on the test set).

    Collects every validation image's logits (``logits_key``; without it, the probabilities under ``pred_key``
    turned back into logits) and label during the validation run; when the model is saved, gathers them over ranks
    and calls :func:`medplugin.metrics.statistics.fit_model_statistics`: temperature scaling (Guo et al. 2017; one
    temperature for softmax, one per finding for sigmoid) and a threshold per class by ``operating_point`` on the
    temperature-scaled probabilities (one-vs-rest for a multi-class model, whose call stays the argmax).

    Args:
        class_names: class names in output order.
        mode: ``softmax`` (one label per image) or ``sigmoid`` (multi-label).
        operating_point: ``youden``, ``sensitivity:<t>`` or ``specificity:<t>``.
        groups: extra points on summed probabilities, ``{name: [class index, ...]}`` (e.g. referable diabetic
            retinopathy, grades 2-4 of a grading model); stored beside the classes' with their ``classes``.
        logits_key: output key of the logits (``None``: use the probabilities).
        pred_key: output key of the probabilities.
        label_key: key of the label (class index, or 0/1 per finding).
    """

    def __init__(self, class_names, mode: str = "softmax", operating_point: str = "youden",
                 groups: dict | None = None, logits_key: str | None = "logits", pred_key: str = "pred",
                 label_key: str = "label") -> None:
        from medplugin.metrics.calibration import MODES
        from medplugin.metrics.operating_points import parse_criterion

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self.class_names = [str(c) for c in class_names]
        self.mode, self.criterion = mode, str(parse_criterion(operating_point))
        self.groups = {str(k): [int(i) for i in v] for k, v in (groups or {}).items()}
        for name, idx in self.groups.items():
            if not idx or min(idx) < 0 or max(idx) >= len(self.class_names):
                raise ValueError(f"group {name!r} must list class indices in 0..{len(self.class_names) - 1}, "
                                 f"got {idx}.")
        self.logits_key, self.pred_key, self.label_key = logits_key, pred_key, label_key
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        self._scores: list = []
        self._labels: list = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)

    def collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            from_logits = self.logits_key is not None and self.logits_key in o
            v = torch.as_tensor(o[self.logits_key if from_logits else self.pred_key]).detach().double().cpu()
            label = b.get(self.label_key) if isinstance(b, dict) and self.label_key in b else o.get(self.label_key)
            self._scores.append((from_logits, v.reshape(-1).numpy()))
            self._labels.append(torch.as_tensor(label).detach().float().cpu().reshape(-1).numpy())

    def _labels_array(self, labels: list):
        import numpy as np

        y = np.stack(labels)
        if self.mode == "sigmoid":
            return y
        return y[:, 0].astype(np.int64) if y.shape[1] == 1 else y.argmax(1)  # class index, or one-hot rows

    def fit(self, engine: Engine | None = None) -> dict:
        """``{"temperature", "operating_points", "validation_calibration"}`` for ``model.json`` (gathered over ranks;
        ``{}`` with a warning when there are no validation images)."""
        import numpy as np

        from medplugin.metrics.calibration import apply_temperature, probabilities_to_logits
        from medplugin.metrics.operating_points import choose_threshold
        from medplugin.metrics.statistics import fit_model_statistics

        scores, labels = gather_samples(engine, self._scores, self._labels)
        if not scores:
            logger.warning("no validation images: model.json gets no temperature or operating points")
            return {}
        logits = np.stack([v if is_logit else probabilities_to_logits(v[None], self.mode)[0] for is_logit, v in scores])
        y = self._labels_array(labels)
        stats = fit_model_statistics(logits, y, self.class_names, self.mode, self.criterion)
        if self.groups:
            probs = apply_temperature(logits, stats["temperature"], self.mode)
            for name, idx in self.groups.items():
                point = choose_threshold(probs[:, idx].sum(1), np.isin(y, idx), self.criterion)
                stats["operating_points"][name] = {**point, "classes": [self.class_names[i] for i in idx]}
        t = stats["temperature"]
        logger.info("on %d validation images: temperature %s, operating points (%s) %s", len(y),
                    f"{t:.3f}" if isinstance(t, float) else [round(v, 3) for v in t], self.criterion,
                    {k: round(v["threshold"], 4) for k, v in stats["operating_points"].items()})
        return stats


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
