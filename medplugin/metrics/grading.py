"""Diabetic-retinopathy metrics: referable-DR screening (binary) and 5-grade agreement (quadratic kappa).

Functional core plus one ignite metric, in the style of :mod:`medplugin.metrics.classification`. The binary
operating points follow the screening literature: sensitivity and specificity at the 0.5 threshold and at the
threshold reaching a target specificity (Gulshan et al., "Development and validation of a deep learning
algorithm for detection of diabetic retinopathy in retinal fundus photographs", JAMA 2016). Grading agreement
is Cohen's kappa with quadratic weights, the Kaggle Diabetic Retinopathy Detection (2015) and APTOS 2019 score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from medplugin.metrics.base import ProbabilityMetric
from medplugin.metrics.classification import classification_report, roc_auc

__all__ = [
    "TASKS",
    "REFERABLE_GRADE",
    "quadratic_weighted_kappa",
    "sensitivity_specificity",
    "threshold_for_specificity",
    "pr_auc",
    "referable_scores",
    "grading_report",
    "flatten_grading_report",
    "GradingMetrics",
]

TASKS = ("referable", "grade")
REFERABLE_GRADE = 2  # international clinical DR scale: moderate NPDR or worse is referable


def quadratic_weighted_kappa(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa with quadratic disagreement weights ``(i - j)**2 / (K - 1)**2``.

    Args:
        labels: ``(N,)`` true ordinal classes in ``[0, num_classes)``.
        preds: ``(N,)`` predicted classes.
        num_classes: K, at least 2.

    Returns:
        kappa in [-1, 1]; 1.0 when both raters put everything in one and the same class (perfect agreement),
        ``nan`` for empty input.
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
    observed = np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)
    observed = observed.astype(np.float64)
    expected = np.outer(observed.sum(1), observed.sum(0)) / labels.size
    idx = np.arange(num_classes)
    weights = (idx[:, None] - idx[None, :]) ** 2 / float((num_classes - 1) ** 2)
    denom = float((weights * expected).sum())
    if denom == 0.0:
        return 1.0 if np.array_equal(labels, preds) else 0.0
    return float(1.0 - (weights * observed).sum() / denom)


def sensitivity_specificity(scores: np.ndarray, positives: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """Sensitivity and specificity of the rule ``score >= threshold`` (``nan`` where a class is absent)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = np.asarray(positives).astype(bool).reshape(-1)
    called = scores >= threshold
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    sens = float((called & positives).sum() / n_pos) if n_pos else float("nan")
    spec = float((~called & ~positives).sum() / n_neg) if n_neg else float("nan")
    return sens, spec


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
    for t in np.unique(scores):  # ascending: the first that qualifies is the most sensitive
        if np.searchsorted(neg, t, side="left") / neg.size >= target_specificity:  # negatives below t
            return float(t)
    return float("inf")


def pr_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation; as sklearn's
    ``average_precision_score``); ``nan`` without positives."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = np.asarray(positives).astype(bool).reshape(-1)
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positives[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(p)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


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


class GradingMetrics(ProbabilityMetric):
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
        output_transform: maps the engine output to ``(probs, labels)`` (batch tensors or lists of them).
        device: ignite's metric device.
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
        allowed = [k for k in _SCALARS if k != "operating_threshold" and (k != "kappa" or task == "grade")]
        if key is not None and key not in allowed:
            raise ValueError(f"key must be None or one of {allowed} for task {task!r}, got {key!r}.")
        if not 0.0 < float(target_specificity) <= 1.0:
            raise ValueError(f"target_specificity must be in (0, 1], got {target_specificity!r}.")
        self.class_names, self.task = list(class_names), task
        self.target_specificity, self.threshold = float(target_specificity), float(threshold)
        super().__init__(len(self.class_names), key, prefix, output_transform, device)

    def _labels(self, labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        if labels.dim() > 1 and labels.shape[-1] == len(self.class_names):
            labels = labels.argmax(dim=-1)  # one-hot
        return labels.reshape(-1).long()

    def _empty_labels(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.long)

    def report(self, probs: np.ndarray, labels: np.ndarray) -> dict:
        return grading_report(probs, labels, self.class_names, self.task, self.target_specificity, self.threshold)

    def flatten(self, report: dict, prefix: str) -> dict[str, float]:
        return flatten_grading_report(report, prefix)
