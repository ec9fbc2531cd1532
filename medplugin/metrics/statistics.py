"""Issue 15's statistics in the few calls the handlers make.

- End of training, on the best model's validation logits: :func:`fit_model_statistics` gives what ``model.json``
  stores (``temperature`` and ``operating_points``; the points are chosen on the temperature-scaled
  probabilities, the ones evaluation and inference threshold).
- Evaluation, on the test set: :func:`evaluation_statistics` gives every headline figure with its patient-level
  interval (``K`` and ``K_ci95``) and the sensitivity, specificity, PPV and NPV at the stored points;
  :func:`write_reliability` gives the ECE before/after temperature scaling and writes ``reliability.png``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from medplugin.metrics._inputs import as_scores
from medplugin.metrics.bootstrap import bootstrap_intervals, ci_entries, ci_key, headline_figures
from medplugin.metrics.calibration import (
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from medplugin.metrics.operating_points import apply_operating_points, choose_operating_points, operating_point_metrics

__all__ = ["fit_model_statistics", "evaluation_statistics", "write_reliability"]


def fit_model_statistics(logits, labels, class_names: Sequence[str], mode: str = "softmax",
                         criterion: str = "youden", default_threshold: float = 0.5, num_bins: int = 15) -> dict:
    """Temperature and operating points from the best model's validation logits, for ``model.json``.

    Args:
        logits: ``(N, C)`` validation logits (see ``calibration.probabilities_to_logits`` if only probabilities
            are at hand).
        labels: ``(N,)`` class indices (softmax) or ``(N, C)`` 0/1 (sigmoid).
        class_names: the C names.
        mode: ``softmax`` (multi-class; one temperature, one-vs-rest points) or ``sigmoid`` (multi-label; a
            temperature and a point per finding).
        criterion: the ``operating_point`` setting: ``youden``, ``sensitivity:<t>`` or ``specificity:<t>``.
        default_threshold: for a class whose point cannot be chosen (logged, marked ``fallback``).
        num_bins: ECE bins.

    Returns:
        ``{"temperature": T or [T per finding], "operating_points": {...}, "validation_calibration":
        {"ece_before", "ece_after", "nll_before", "nll_after", "num_bins"}}``, plain JSON.
    """
    names = list(class_names)
    temperature = fit_temperature(logits, labels, mode, class_names=names)
    probs = apply_temperature(logits, temperature, mode)
    points = choose_operating_points(probs, labels, names, criterion, default_threshold)
    cal = calibration_report(logits, labels, temperature, mode, num_bins, names)
    return {"temperature": temperature, "operating_points": points,
            "validation_calibration": {k: cal[k] for k in ("ece_before", "ece_after", "nll_before", "nll_after",
                                                           "num_bins")}}


def evaluation_statistics(probs, labels, class_names: Sequence[str], kind: str, patient_ids: Sequence | None = None,
                          operating_points: Mapping[str, Mapping] | None = None, n_resamples: int = 1000,
                          seed: int = 0, level: float = 0.95, kappa: str | None = None, dice=None) -> dict:
    """Headline figures with patient-level intervals and the figures at the stored operating points.

    Args:
        probs: ``(N, C)`` test probabilities (temperature-scaled when the model has a temperature).
        labels: ``(N,)`` class indices (multi-class) or ``(N, C)`` 0/1 (multi-label).
        class_names: the C names.
        kind: ``multiclass`` or ``multilabel``.
        patient_ids: one per image (``None``: images resampled independently).
        operating_points: ``model.json``'s ``operating_points`` (adds sensitivity/specificity/PPV/NPV).
        n_resamples, seed, level: the bootstrap's (``--bootstrap N``).
        kappa: ``quadratic`` (grading), ``linear`` or ``unweighted`` for a multi-class run.
        dice: per-case Dice (adds ``mean_dice``).

    Returns:
        ``{K: value, K + "_ci95": [low, high], ..., "operating_points": {name: {"threshold", "sensitivity",
        "specificity", "ppv", "npv", "tp", "fp", "tn", "fn"}}, "bootstrap": {"n_resamples", "seed", "level",
        "resampling_unit", "n_patients", "undefined": {K: resamples left out}}}``; merge it into
        ``metrics.json``. ``K`` are the names of :func:`medplugin.metrics.bootstrap.headline_figures`.
    """
    s = as_scores(probs)
    names = list(class_names)
    calls = apply_operating_points(s, operating_points, names) if operating_points else None
    figs = headline_figures(s, labels, names, kind, calls, kappa, dice)
    res = bootstrap_intervals(figs, patient_ids, s.shape[0], n_resamples, seed, level)
    out = ci_entries(res, level)
    if operating_points:
        out["operating_points"] = operating_point_metrics(s, labels, operating_points, names)
    key = ci_key(level)
    out["bootstrap"] = {
        "n_resamples": int(n_resamples), "seed": seed, "level": level, "interval": key,
        "resampling_unit": "patient" if patient_ids is not None else "image",
        "n_patients": len(set(map(str, patient_ids))) if patient_ids is not None else s.shape[0],
        "undefined": {k: n_resamples - r["n_valid"] for k, r in res.items()
                      if np.isfinite(r["value"]) and r["n_valid"] < n_resamples},
    }
    return out


def write_reliability(logits, labels, temperature, mode: str, path: str | os.PathLike,
                      class_names: Sequence[str] | None = None, num_bins: int = 15) -> dict:
    """ECE of the test probabilities before and after temperature scaling, and ``reliability.png`` at ``path``.

    Returns:
        ``{"ece_before", "ece_after", "num_bins"}`` (sigmoid: the mean over findings, with ``per_class``).
    """
    from medplugin.visualize.reliability import plot_reliability

    before = apply_temperature(logits, 1.0, mode)
    after = apply_temperature(logits, temperature, mode)
    e0 = expected_calibration_error(before, labels, mode, num_bins, class_names)
    e1 = expected_calibration_error(after, labels, mode, num_bins, class_names)
    curves = {"before": reliability_bins(before, labels, mode, num_bins),
              "after temperature scaling": reliability_bins(after, labels, mode, num_bins)}
    what = "top-label confidence" if mode == "softmax" else "all findings pooled"
    plot_reliability(curves, path, title=f"reliability ({what})",
                     ece={"before": e0["ece"], "after temperature scaling": e1["ece"]})
    out = {"ece_before": e0["ece"], "ece_after": e1["ece"], "num_bins": int(num_bins)}
    if mode == "sigmoid":
        out["per_class"] = {n: {"ece_before": e0["per_class"][n], "ece_after": e1["per_class"][n]}
                            for n in e0["per_class"]}
    return out
