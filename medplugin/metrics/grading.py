"""Diabetic-retinopathy metrics: referable-DR screening (binary) and 5-grade agreement (quadratic kappa).

A report on scikit-learn plus one ignite metric, in the style of :mod:`medplugin.metrics.classification`. The binary
operating points follow the screening literature: sensitivity and specificity at the 0.5 threshold and at the
threshold reaching a target specificity (Gulshan et al., "Development and validation of a deep learning
algorithm for detection of diabetic retinopathy in retinal fundus photographs", JAMA 2016). Grading agreement
is Cohen's kappa with quadratic weights, the Kaggle Diabetic Retinopathy Detection (2015) and APTOS 2019 score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn import metrics as skm

from medplugin.metrics.base import ReportMetric
from medplugin.metrics.classification import classification_report, roc_auc, sensitivity_specificity

__all__ = ["REFERABLE_GRADE", "TASKS", "GradingMetrics", "flatten_grading_report", "grading_report", "pr_auc",
           "quadratic_weighted_kappa", "referable_scores", "sensitivity_specificity", "threshold_for_specificity"]

TASKS = ("referable", "grade")
REFERABLE_GRADE = 2  # international clinical DR scale: moderate NPDR or worse is referable


def quadratic_weighted_kappa(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa with quadratic disagreement weights (``sklearn.metrics.cohen_kappa_score`` on the classes
    ``0..num_classes-1``, so an absent grade keeps its place on the scale).

    Args:
        labels: ``(N,)`` true ordinal classes in ``[0, num_classes)``.
        preds: ``(N,)`` predicted classes.
        num_classes: K, at least 2.

    Returns:
        kappa in [-1, 1]; 1.0 when both raters put everything in one and the same class (perfect agreement,
        where the chance agreement is 1 too), ``nan`` for empty input.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes!r}.")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    preds = np.asarray(preds, dtype=np.int64).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"{labels.size} labels but {preds.size} predictions.")
    if labels.size == 0:
        return float("nan")
    for name, v in (("labels", labels), ("preds", preds)):
        if v.min() < 0 or v.max() >= num_classes:
            raise ValueError(f"{name} must be in [0, {num_classes - 1}], got values {sorted(set(v.tolist()))}.")
    if np.unique(np.r_[labels, preds]).size == 1:  # chance agreement 1: kappa is 0/0 (scikit-learn gives nan)
        return 1.0
    return float(skm.cohen_kappa_score(labels, preds, labels=np.arange(num_classes), weights="quadratic"))


def threshold_for_specificity(scores: np.ndarray, positives: np.ndarray, target_specificity: float = 0.9) -> float:
    """The lowest threshold (most sensitive rule ``score >= t``) whose specificity is at least the target.

    Candidate thresholds are the observed scores (and +inf, calling nothing positive, which always reaches
    specificity 1). Chosen on the data it is given: report it from a validation set and carry it to a test set
    for an unbiased operating point.

    Args:
        scores: ``(N,)`` scores of the positive class.
        positives: ``(N,)`` booleans.
        target_specificity: in (0, 1].

    Returns:
        the threshold; ``nan`` when there are no negatives.
    """
    if not 0.0 < float(target_specificity) <= 1.0:
        raise ValueError(f"target_specificity must be in (0, 1], got {target_specificity!r}.")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = np.asarray(positives).astype(bool).reshape(-1)
    neg = np.sort(scores[~positives])
    if neg.size == 0:
        return float("nan")
    candidates = np.unique(scores)  # ascending: the first that qualifies is the most sensitive
    reached = np.flatnonzero(np.searchsorted(neg, candidates, side="left") / neg.size >= target_specificity)
    return float(candidates[reached[0]]) if reached.size else float("inf")


def pr_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (``sklearn.metrics.average_precision_score``:
    step-wise, no interpolation); ``nan`` without positives."""
    positives = np.asarray(positives).astype(bool).reshape(-1)
    if not positives.any():
        return float("nan")
    return float(skm.average_precision_score(positives, np.asarray(scores, dtype=np.float64).reshape(-1)))


def referable_scores(probs: np.ndarray, task: str) -> np.ndarray:
    """Probability of referable DR from the network's class probabilities.

    ``task="referable"``: ``probs[:, 1]``; ``task="grade"``: the summed probability of grades 2-4.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if task == "referable":
        if probs.ndim != 2 or probs.shape[1] != 2:
            raise ValueError(f"task 'referable' needs (N, 2) probabilities, got shape {probs.shape}.")
        return probs[:, 1]
    if task == "grade":
        if probs.ndim != 2 or probs.shape[1] != 5:
            raise ValueError(f"task 'grade' needs (N, 5) probabilities, got shape {probs.shape}.")
        return probs[:, REFERABLE_GRADE:].sum(1)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}.")


def grading_report(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    task: str = "referable",
    target_specificity: float = 0.9,
    threshold: float = 0.5,
) -> dict:
    """Everything a DR evaluation reports, as plain Python values.

    The multi-class part is :func:`medplugin.metrics.classification_report` (accuracy, confusion matrix,
    per-class figures). On top, for referable DR (label >= 1 for ``"referable"``, grade >= 2 for ``"grade"``):
    ``auc`` (ROC), ``pr_auc``, ``sensitivity``/``specificity`` at ``threshold``, ``operating_threshold`` reaching
    ``target_specificity`` with its ``operating_sensitivity``/``operating_specificity``; and ``kappa``
    (quadratic weighted) of the argmax grades for ``task="grade"``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(axis=1)
    labels = labels.astype(np.int64).reshape(-1)
    report = classification_report(probs, labels, class_names)
    scores = referable_scores(probs, task)
    positives = labels >= (1 if task == "referable" else REFERABLE_GRADE)
    sens, spec = sensitivity_specificity(scores, positives, threshold)
    t = threshold_for_specificity(scores, positives, target_specificity)
    op_sens, op_spec = sensitivity_specificity(scores, positives, t) if not np.isnan(t) else (np.nan, np.nan)
    report.update({
        "task": task,
        "auc": roc_auc(scores, positives),
        "pr_auc": pr_auc(scores, positives),
        "threshold": float(threshold),
        "sensitivity": sens,
        "specificity": spec,
        "target_specificity": float(target_specificity),
        "operating_threshold": t,
        "operating_sensitivity": float(op_sens),
        "operating_specificity": float(op_spec),
        "referable_prevalence": float(positives.mean()) if positives.size else float("nan"),
    })
    if task == "grade":
        report["kappa"] = quadratic_weighted_kappa(labels, probs.argmax(1), len(class_names))
    return report


_SCALARS = ("accuracy", "auc", "pr_auc", "sensitivity", "specificity", "operating_threshold",
            "operating_sensitivity", "operating_specificity", "kappa")


def flatten_grading_report(report: dict, prefix: str = "") -> dict[str, float]:
    """Scalar entries of :func:`grading_report` as ``{prefix + name: value}`` (for TensorBoard and logs)."""
    out = {f"{prefix}{k}": float(report[k]) for k in _SCALARS if k in report}
    for cls, vals in report["per_class"].items():
        for k in ("sensitivity", "specificity"):
            out[f"{prefix}{cls}_{k}"] = float(vals[k])
    return out


class GradingMetrics(ReportMetric):
    """Ignite metric accumulating probabilities and labels and computing :func:`grading_report`.

    With ``key`` set, ``compute`` returns that scalar (a key metric for checkpoints: ``auc`` for referable DR,
    ``kappa`` for grading); otherwise the flat dict of all scalars, which ignite stores as separate
    ``engine.state.metrics`` entries. Gathered over all ranks in distributed runs.

    Args:
        class_names: class names in output order (2 for ``"referable"``, 5 for ``"grade"``).
        task: ``"referable"`` or ``"grade"``.
        key: ``None`` or one of ``accuracy``, ``auc``, ``pr_auc``, ``sensitivity``, ``specificity``,
            ``operating_sensitivity``, ``operating_specificity``, ``kappa`` (grade only).
        prefix: prepended to every name of the flat dict (e.g. ``"val_"``).
        target_specificity: specificity the operating threshold must reach.
        threshold: the fixed threshold of ``sensitivity``/``specificity``.
        output_transform: maps the engine output to ``(probs, labels)`` (batch tensors or lists of per-sample
            tensors; labels as grades or one-hot rows).
        device: where ignite keeps the epoch's tensors.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        task: str = "referable",
        key: str | None = None,
        prefix: str = "",
        target_specificity: float = 0.9,
        threshold: float = 0.5,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        expected = 2 if task == "referable" else 5
        if len(class_names) != expected:
            raise ValueError(f"task {task!r} needs {expected} class names, got {list(class_names)}.")
        if not 0.0 < float(target_specificity) <= 1.0:
            raise ValueError(f"target_specificity must be in (0, 1], got {target_specificity!r}.")
        self.class_names, self.task = list(class_names), task
        self.target_specificity, self.threshold = float(target_specificity), float(threshold)
        keys = [k for k in _SCALARS if k != "operating_threshold" and (k != "kappa" or task == "grade")]
        super().__init__(len(self.class_names), key, keys, prefix, output_transform, device)

    def report(self, probs: np.ndarray, labels: np.ndarray) -> dict:
        return grading_report(probs, labels, self.class_names, self.task, self.target_specificity, self.threshold)

    def flatten(self, report: dict, prefix: str) -> dict[str, float]:
        return flatten_grading_report(report, prefix)
