"""Operating points: a threshold per class chosen on validation scores, stored with the model, applied to new scores.

A point is chosen by a criterion string (``operating_point`` in the bundle configs):

- ``youden``: the threshold maximising Youden's J = sensitivity + specificity - 1 (Youden, "Index for rating
  diagnostic tests", Cancer 1950);
- ``sensitivity:0.90``: the highest threshold whose sensitivity is at least 0.90 (the most specific rule
  reaching the target sensitivity);
- ``specificity:0.95``: the lowest threshold whose specificity is at least 0.95 (the most sensitive rule
  reaching the target specificity).

A class is called positive when ``score >= threshold``. Candidate thresholds are the distinct observed scores
plus one just above the highest score (calling nothing), so a stored threshold is always a finite number.
Ties in Youden's J (compared exactly, in integer counts) go to the lowest threshold, the more sensitive rule.

Degenerate classes: a class without positive validation images has no sensitivity, one without negatives no
specificity. ``specificity:x`` still works without positives and ``sensitivity:x`` without negatives; any
other case stores ``default_threshold`` (0.5 unless given) with ``"fallback": <reason>`` and a logged warning.

Binary scores are one column; multi-label scores one column per finding; multi-class scores (softmax) give
one-vs-rest points per class (the argmax call of the model is unaffected). Stored as ``model.json``'s
``operating_points``: ``{class name: {"threshold", "criterion", "sensitivity", "specificity", "n_positive",
"n_negative"}}`` (validation figures at that threshold; ``null`` where undefined).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medplugin.metrics._inputs import as_positives, as_scores, class_names_for

__all__ = [
    "Criterion",
    "parse_criterion",
    "choose_threshold",
    "choose_operating_points",
    "thresholds_of",
    "apply_operating_points",
    "operating_point_metrics",
    "flatten_operating_point_metrics",
]

logger = logging.getLogger(__name__)

_PATTERN = re.compile(r"^\s*(youden|sensitivity|specificity)\s*(?::\s*([^\s]+))?\s*$", re.IGNORECASE)
_EPS = 1e-12


@dataclass(frozen=True)
class Criterion:
    """A parsed operating-point criterion: ``kind`` in ``youden|sensitivity|specificity`` and its ``target``."""

    kind: str
    target: float | None = None

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target:g}"


def parse_criterion(text: str | Criterion) -> Criterion:
    """Parse ``youden``, ``sensitivity:<t>`` or ``specificity:<t>`` (``t`` in (0, 1]).

    Raises:
        ValueError: naming the string and what is wrong with it.
    """
    if isinstance(text, Criterion):
        return text
    usage = "'youden', 'sensitivity:<target in (0, 1]>' or 'specificity:<target in (0, 1]>' (e.g. 'sensitivity:0.90')"
    m = _PATTERN.match(str(text)) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"operating_point must be {usage}, got {text!r}.")
    kind, target = m.group(1).lower(), m.group(2)
    if kind == "youden":
        if target is not None:
            raise ValueError(f"operating_point 'youden' takes no target, got {text!r}.")
        return Criterion("youden")
    if target is None:
        raise ValueError(f"operating_point {kind!r} needs a target, e.g. '{kind}:0.90'; got {text!r}.")
    try:
        value = float(target)
    except ValueError:
        raise ValueError(f"the target of operating_point {text!r} is not a number ({target!r}); use {usage}.") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"the target of operating_point {text!r} must be in (0, 1] (a fraction, not a percentage), "
                         f"got {value!r}.")
    return Criterion(kind, value)


def _counts(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (ascending) with the true-positive and true-negative counts of ``score >= t``."""
    cand = np.unique(scores)
    top = np.nextafter(cand[-1], np.inf) if cand.size else 0.5
    cand = np.r_[cand, top]  # the last one calls nothing positive
    pos, neg = np.sort(scores[positives]), np.sort(scores[~positives])
    tp = pos.size - np.searchsorted(pos, cand, side="left")  # positives at or above t
    tn = np.searchsorted(neg, cand, side="left")  # negatives below t
    return cand, tp, tn


def choose_threshold(scores, positives, criterion: str | Criterion = "youden",
                     default_threshold: float = 0.5) -> dict:
    """Choose one class's threshold on its validation ``scores`` (1-D) and booleans ``positives``.

    Returns:
        ``{"threshold", "criterion", "sensitivity", "specificity", "n_positive", "n_negative"}`` with the
        validation sensitivity and specificity at the threshold (``None`` where undefined), plus ``"fallback"``
        (the reason) when the class could not be chosen and ``default_threshold`` was stored.
    """
    crit = parse_criterion(criterion)
    s = as_scores(scores)[:, 0]
    p = as_positives(positives, 1, n=s.size)[:, 0]
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    out = {"criterion": str(crit), "n_positive": n_pos, "n_negative": n_neg}
    reason = None
    if s.size == 0:
        reason = "no validation images"
    elif crit.kind == "youden" and (n_pos == 0 or n_neg == 0):
        reason = "no positive validation images" if n_pos == 0 else "no negative validation images"
    elif crit.kind == "sensitivity" and n_pos == 0:
        reason = "no positive validation images"
    elif crit.kind == "specificity" and n_neg == 0:
        reason = "no negative validation images"
    if reason is not None:
        t = float(default_threshold)
        out["fallback"] = f"{reason}: default threshold {t:g}"
    else:
        cand, tp, tn = _counts(s, p)
        if crit.kind == "youden":
            j = tp.astype(np.int64) * n_neg + tn.astype(np.int64) * n_pos  # J * P * N + P * N, exact
            k = int(np.flatnonzero(j == j.max())[0])  # ties: the lowest threshold
        elif crit.kind == "sensitivity":
            k = int(np.flatnonzero(tp / n_pos >= crit.target - _EPS)[-1])  # tp falls with t: the highest
        else:
            k = int(np.flatnonzero(tn / n_neg >= crit.target - _EPS)[0])  # tn grows with t: the lowest
        t = float(cand[k])
    called = s >= t
    out["threshold"] = t
    out["sensitivity"] = float((called & p).sum() / n_pos) if n_pos else None
    out["specificity"] = float((~called & ~p).sum() / n_neg) if n_neg else None
    return {k: out[k] for k in ("threshold", "criterion", "sensitivity", "specificity", "n_positive", "n_negative",
                                "fallback") if k in out}


def choose_operating_points(scores, labels, class_names: Sequence[str] | None = None,
                            criterion: str | Criterion = "youden", default_threshold: float = 0.5) -> dict[str, dict]:
    """Operating points per class from validation scores (see the module docstring for the rules).

    Args:
        scores: ``(N,)`` binary scores, or ``(N, C)`` per-finding (multi-label) or per-class (softmax) scores.
        labels: ``(N,)`` 0/1 (binary), ``(N,)`` class indices (multi-class, one-vs-rest), or ``(N, C)`` 0/1.
        class_names: the C names (keys of the result).
        criterion: ``youden``, ``sensitivity:<t>`` or ``specificity:<t>``.
        default_threshold: stored for a class whose point cannot be chosen (logged).

    Returns:
        ``{class name: choose_threshold(...)}``, JSON-serialisable as ``model.json``'s ``operating_points``.
    """
    crit = parse_criterion(criterion)
    s = as_scores(scores)
    names = class_names_for(class_names, s.shape[1])
    pos = as_positives(labels, s.shape[1], n=s.shape[0])
    points = {}
    for c, name in enumerate(names):
        points[name] = choose_threshold(s[:, c], pos[:, c], crit, default_threshold)
        if "fallback" in points[name]:
            logger.warning("operating point of %r (%s): %s", name, crit, points[name]["fallback"])
    return points


def thresholds_of(points: Mapping[str, Mapping], class_names: Sequence[str]) -> np.ndarray:
    """The stored thresholds in ``class_names`` order; a clear error names the classes without a point."""
    names = list(class_names)
    missing = [n for n in names if n not in points]
    if missing:
        raise ValueError(f"no stored operating point for {missing}; the points name {sorted(points)}.")
    t = np.asarray([float(points[n]["threshold"]) for n in names], dtype=np.float64)
    if not np.isfinite(t).all():
        raise ValueError(f"stored thresholds must be finite numbers, got {dict(zip(names, t.tolist()))}.")
    return t


def apply_operating_points(scores, points: Mapping[str, Mapping], class_names: Sequence[str]) -> np.ndarray:
    """Calls (``(N, C)`` int 0/1) of new ``scores`` at the stored thresholds (``score >= threshold``)."""
    s = as_scores(scores)
    names = class_names_for(class_names, s.shape[1])
    return (s >= thresholds_of(points, names)[None, :]).astype(np.int8)


def _ratio(a: int, b: int) -> float | None:
    return float(a / b) if b else None


def operating_point_metrics(scores, labels, points: Mapping[str, Mapping],
                            class_names: Sequence[str]) -> dict[str, dict]:
    """Sensitivity, specificity, PPV and NPV of new (test) scores at the stored thresholds, never re-chosen.

    Returns:
        ``{class name: {"threshold", "sensitivity", "specificity", "ppv", "npv", "tp", "fp", "tn", "fn"}}``;
        a rate whose denominator is 0 (no positives, no calls, ...) is ``None``.
    """
    s = as_scores(scores)
    names = class_names_for(class_names, s.shape[1])
    pos = as_positives(labels, s.shape[1], n=s.shape[0])
    calls = apply_operating_points(s, points, names).astype(bool)
    thr = thresholds_of(points, names)
    out = {}
    for c, name in enumerate(names):
        p, k = pos[:, c], calls[:, c]
        tp, fp = int((k & p).sum()), int((k & ~p).sum())
        tn, fn = int((~k & ~p).sum()), int((~k & p).sum())
        out[name] = {"threshold": float(thr[c]), "sensitivity": _ratio(tp, tp + fn),
                     "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
                     "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    return out


def flatten_operating_point_metrics(report: Mapping[str, Mapping], prefix: str = "") -> dict[str, float]:
    """``{prefix + name + "_sensitivity": ..., "_specificity", "_ppv", "_npv"}`` (``nan`` for ``None``)."""
    out = {}
    for name, v in report.items():
        for k in ("sensitivity", "specificity", "ppv", "npv"):
            out[f"{prefix}{name}_{k}"] = float("nan") if v[k] is None else float(v[k])
    return out
