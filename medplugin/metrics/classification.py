"""Multi-class classification metrics on scikit-learn: one report, used by the ignite metric and the evaluation.

The thin wrappers fix what scikit-learn leaves open for our reports: the class set (``0..C-1``, also when a
class is absent), the argument order ``(scores, positives)`` and NaN for a figure that is undefined (an AUC
without positives or negatives, a precision of a class never predicted) instead of a warning or an error,
the same on every scikit-learn release the package allows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn import metrics as skm

from medplugin.metrics.base import ReportMetric

__all__ = ["ClassificationMetrics", "classification_report", "confusion_matrix", "flatten_report", "roc_auc",
           "roc_curve", "sensitivity_specificity"]


def roc_curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of binary ``positives`` ranked by ``scores``: ``(fpr, tpr, thresholds)``, one point per distinct
    score (``sklearn.metrics.roc_curve`` with ``drop_intermediate=False``); the first threshold is ``inf``."""
    return skm.roc_curve(np.asarray(positives).astype(bool).reshape(-1),
                         np.asarray(scores, dtype=np.float64).reshape(-1), drop_intermediate=False)


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``; ties count half); ``nan`` when one class
    is absent."""
    positives = np.asarray(positives).astype(bool).reshape(-1)
    if positives.all() or not positives.any():
        return float("nan")
    return float(skm.roc_auc_score(positives, np.asarray(scores, dtype=np.float64).reshape(-1)))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows = true class, columns = predicted class (zeros without samples)."""
    labels, preds = np.asarray(labels, dtype=np.int64).reshape(-1), np.asarray(preds, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return skm.confusion_matrix(labels, preds, labels=np.arange(num_classes))


def sensitivity_specificity(scores: np.ndarray, positives: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """Sensitivity and specificity of the rule ``score >= threshold`` (``nan`` where a class is absent)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = np.asarray(positives).astype(bool).reshape(-1)
    called = scores >= threshold
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    sens = float((called & positives).sum() / n_pos) if n_pos else float("nan")
    spec = float((~called & ~positives).sum() / n_neg) if n_neg else float("nan")
    return sens, spec


def classification_report(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Everything a multi-class evaluation reports, as plain Python values.

    Args:
        probs: ``(N, C)`` class probabilities (or scores).
        labels: ``(N,)`` true class indices, or ``(N, C)`` one-hot.
        class_names: the C class names, in output order.

    Returns:
        dict with ``accuracy``, ``misclassification_rate``, ``macro_auc`` (one-vs-rest, mean over classes
        with both outcomes present), ``n``, ``per_class`` {name: sensitivity, specificity, precision, recall
        (= sensitivity), f1, auc, support}, ``weighted_avg`` {precision, recall, f1} (support-weighted, a
        precision of a class never predicted counting 0) and ``confusion_matrix`` (rows true, columns
        predicted). Undefined figures (no samples, a class absent or never predicted) are ``nan``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(f"probs must be (N, {num_classes}) for classes {list(class_names)}, got {probs.shape}.")
    if labels.ndim == 2:
        labels = labels.argmax(axis=1)
    labels = labels.astype(np.int64).reshape(-1)
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} predictions but {labels.shape[0]} labels.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got values {sorted(set(labels.tolist()))}.")
    n, preds = int(labels.size), probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, num_classes)
    # the count figures from the confusion matrix: precision_recall_fscore_support's zero_division handling
    # differs between scikit-learn releases (1.3 gives F1 nan, not 0, for a class present but never predicted)
    tp = np.diag(cm).astype(np.float64)
    fp, fn, support = cm.sum(0) - tp, cm.sum(1) - tp, cm.sum(1)
    tn = n - tp - fp - fn

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.full(num_classes, np.nan), where=b > 0)

    recall, precision, f1 = ratio(tp, tp + fn), ratio(tp, tp + fp), ratio(2 * tp, 2 * tp + fp + fn)
    specificity = ratio(tn, tn + fp)
    per_class = {
        name: {
            "sensitivity": float(recall[c]),
            "specificity": float(specificity[c]),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "auc": roc_auc(probs[:, c], labels == c),
            "support": int(support[c]),
        }
        for c, name in enumerate(class_names)
    }
    aucs = [v["auc"] for v in per_class.values() if not np.isnan(v["auc"])]
    accuracy = float(np.trace(cm) / n) if n else float("nan")
    # support-weighted; an undefined figure (a class never predicted has no precision) counts 0
    weighted = {k: float(np.average(np.nan_to_num(v), weights=support)) if n else float("nan")
                for k, v in (("precision", precision), ("recall", recall), ("f1", f1))}
    return {
        "n": n,
        "accuracy": accuracy,
        "misclassification_rate": 1.0 - accuracy if n else float("nan"),
        "macro_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "per_class": per_class,
        "weighted_avg": weighted,
        "confusion_matrix": cm.tolist(),
    }


def flatten_report(report: dict, prefix: str = "") -> dict[str, float]:
    """Scalar entries of :func:`classification_report` as ``{prefix + name: value}`` (for TensorBoard/logs)."""
    out = {f"{prefix}{k}": float(report[k]) for k in ("accuracy", "misclassification_rate", "macro_auc")}
    for cls, vals in report["per_class"].items():
        for k in ("sensitivity", "specificity", "auc"):
            out[f"{prefix}{cls}_{k}"] = float(vals[k])
        for k in ("precision", "recall", "f1"):
            if k in vals:
                out[f"{prefix}{cls}_{k}"] = float(vals[k])
    for k, v in report.get("weighted_avg", {}).items():
        out[f"{prefix}weighted_{k}"] = float(v)
    return out


class ClassificationMetrics(ReportMetric):
    """Ignite metric that accumulates probabilities and labels and computes :func:`classification_report`.

    With ``key`` set, ``compute`` returns that one scalar (usable as a key metric for checkpoints);
    otherwise it returns the flat dict of every scalar (accuracy, macro AUC, per-class sensitivity,
    specificity and AUC), which ignite stores as separate ``engine.state.metrics`` entries so TensorBoard and
    the progress logs show each. Gathered over all ranks in distributed runs (uneven shards included).

    Args:
        class_names: class names in output order.
        key: ``None`` for all scalars, or one of ``accuracy``, ``macro_auc``, ``misclassification_rate``.
        prefix: prepended to every name of the flat dict (e.g. ``"val_"``).
        output_transform: maps the engine output to ``(probs, labels)``; each may be a batch tensor or a list
            of per-sample tensors (MONAI's decollated output, e.g. ``monai.handlers.from_engine``); labels are
            class indices or one-hot rows.
        device: where ignite keeps the epoch's tensors.
    """

    _KEYS = ("accuracy", "macro_auc", "misclassification_rate")

    def __init__(
        self,
        class_names: Sequence[str],
        key: str | None = None,
        prefix: str = "",
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(class_names) < 2:
            raise ValueError(f"need at least two class names, got {list(class_names)}.")
        self.class_names = list(class_names)
        super().__init__(len(self.class_names), key, self._KEYS, prefix, output_transform, device)

    def report(self, probs: np.ndarray, labels: np.ndarray) -> dict:
        return classification_report(probs, labels, self.class_names)

    def flatten(self, report: dict, prefix: str) -> dict[str, float]:
        return flatten_report(report, prefix)
