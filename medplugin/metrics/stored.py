"""What a trained model's ``model.json`` stores for decisions: its temperature and its operating points.

``medplugin.handlers.BestModelSaver`` writes them at the end of training (chosen on the best model's validation
predictions, see :func:`medplugin.metrics.statistics.fit_model_statistics`); evaluation, inference and MONAI Label
read them here, so that every place that calls a finding uses the same thresholds.

A ``model.json`` without them (a model trained before they existed, or weights exported without a validation
set) is still usable: temperature 1 (the probabilities as the network gives them) and, for thresholds, the
``default`` given by the caller, with a logged warning that says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from medplugin.errors import BadInputError

__all__ = ["read_model_meta", "stored_temperature", "stored_operating_points", "stored_thresholds", "add_calls"]

logger = logging.getLogger(__name__)


def read_model_meta(path: str | os.PathLike | Mapping | None) -> dict:
    """The contents of a ``model.json`` (``{}`` for ``None`` or a missing file; a mapping is returned as a dict).

    Raises:
        BadInputError: the file is not a JSON object.
    """
    if path is None:
        return {}
    if isinstance(path, Mapping):
        return dict(path)
    p = Path(path)
    if not p.is_file():
        return {}
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise BadInputError(p, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise BadInputError(p, f"expected a JSON object, got {type(meta).__name__}")
    return meta


def stored_temperature(model_json: str | os.PathLike | Mapping | None) -> float | list[float]:
    """The stored ``temperature`` (one number, or one per finding), 1.0 when there is none.

    Raises:
        BadInputError: a temperature that is not a positive finite number (or a list of them).
    """
    meta = read_model_meta(model_json)
    t = meta.get("temperature")
    if t is None:
        return 1.0
    values = t if isinstance(t, list) else [t]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                             for v in values):
        raise BadInputError(model_json if not isinstance(model_json, Mapping) else "model.json",
                            f"temperature must be a positive number or a list of them, got {t!r}")
    return [float(v) for v in t] if isinstance(t, list) else float(t)


def stored_operating_points(model_json: str | os.PathLike | Mapping | None, class_names: Sequence[str],
                            threshold: float | Sequence[float] | None = None,
                            default: float = 0.5) -> dict[str, dict]:
    """The operating point of every class: ``{name: {"threshold", "criterion", ...}}``.

    Args:
        model_json: the model's ``model.json`` (a path or its contents).
        class_names: the classes, in output order.
        threshold: ``None``: the stored points; a number (or one per class): that fixed threshold instead (the
            ``criterion`` then says so).
        default: for a class without a stored point (logged).

    Returns:
        the stored entries (``threshold``, ``criterion``, validation ``sensitivity``/``specificity``, ...), or
        ``{"threshold": t, "criterion": "fixed threshold"}`` / ``{"threshold": default, "criterion": "default
        (no stored operating point)"}``.
    """
    names = [str(c) for c in class_names]
    if threshold is not None:
        ts = [float(threshold)] * len(names) if isinstance(threshold, (int, float)) else [float(v) for v in threshold]
        if len(ts) != len(names) or not all(math.isfinite(v) for v in ts):
            raise ValueError(f"threshold must be one number or {len(names)} numbers, got {threshold!r}.")
        return {n: {"threshold": t, "criterion": "fixed threshold"} for n, t in zip(names, ts)}
    points = read_model_meta(model_json).get("operating_points") or {}
    if not isinstance(points, Mapping):
        raise BadInputError(model_json if not isinstance(model_json, Mapping) else "model.json",
                            f"operating_points must be an object keyed by class name, got {type(points).__name__}")
    out, missing = {}, []
    for n in names:
        p = points.get(n)
        if isinstance(p, Mapping) and isinstance(p.get("threshold"), (int, float)) and math.isfinite(p["threshold"]):
            out[n] = {**p, "threshold": float(p["threshold"])}
        else:
            missing.append(n)
            out[n] = {"threshold": float(default), "criterion": "default (no stored operating point)"}
    if missing:
        where = model_json if not isinstance(model_json, Mapping) else "model.json"
        logger.warning("%s stores no operating point for %s: called at %g (train the bundle to choose them on "
                       "validation)", where, missing if len(missing) < len(names) else "any class", default)
    return out


def stored_thresholds(model_json: str | os.PathLike | Mapping | None, class_names: Sequence[str],
                      threshold: float | Sequence[float] | None = None, default: float = 0.5) -> list[float]:
    """The thresholds of :func:`stored_operating_points`, in ``class_names`` order (for configs: the findings
    called, the CAMs drawn)."""
    points = stored_operating_points(model_json, class_names, threshold, default)
    return [points[str(n)]["threshold"] for n in class_names]


def add_calls(prediction: Sequence[dict], model_json: str | os.PathLike | Mapping | None,
              class_names: Sequence[str] | None = None, default: float = 0.5) -> list[dict]:
    """A classification answer with each class's call: MONAI Label's ``prediction`` entries (``{"idx", "label",
    "score"}``) plus ``"threshold"`` (the stored operating point) and ``"call"`` (1 when ``score >= threshold``).

    Args:
        prediction: the answer's entries; ``idx`` is the class's output index.
        model_json: the model's ``model.json`` (its ``operating_points``; its ``class_names`` when not given).
        class_names: the classes in output order (default: ``model.json``'s ``class_names``).
        default: the threshold of a class without a stored point (logged).

    Returns:
        new entries (the input is not changed).
    """
    meta = read_model_meta(model_json)
    names = list(class_names) if class_names is not None else list(meta.get("class_names") or [])
    if not names:
        raise BadInputError(model_json if not isinstance(model_json, Mapping) else "model.json",
                            "no class_names: the answer's classes cannot be matched to operating points")
    thresholds = stored_thresholds(meta, names, None, default)
    out = []
    for entry in prediction:
        i = int(entry["idx"])
        if not 0 <= i < len(names):
            raise ValueError(f"answer entry {entry!r} names output {i}, but the model has {len(names)} classes.")
        out.append({**entry, "threshold": thresholds[i], "call": int(float(entry["score"]) >= thresholds[i])})
    return out
