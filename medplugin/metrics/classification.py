"""Multi-class classification metrics: one functional core, used by the ignite metric and the reports."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from medplugin.metrics.base import ProbabilityMetric

__all__ = ["roc_auc", "roc_curve", "confusion_matrix", "classification_report", "ClassificationMetrics"]


def roc_curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of binary ``positives`` ranked by ``scores``: ``(fpr, tpr, thresholds)`` (ties grouped)."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positives[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(p)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = p.sum(), (~p).sum()
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(distinct.size + 1, np.nan)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(distinct.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney with tie correction); ``nan`` when one class is absent."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives).astype(bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows = true class, columns = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Everything a multi-class evaluation reports, as plain Python values.

    Args:
        probs: ``(N, C)`` class probabilities (or scores).
        labels: ``(N,)`` true class indices, or ``(N, C)`` one-hot.
        class_names: the C class names, in output order.

    Returns:
        dict with ``accuracy``, ``misclassification_rate``, ``macro_auc`` (one-vs-rest, mean over classes
        with both outcomes present), ``n``, ``per_class`` {name: sensitivity, specificity, precision, recall
        (= sensitivity), f1, auc, support}, ``weighted_avg`` {precision, recall, f1} (support-weighted) and
        ``confusion_matrix`` (rows true, columns predicted).
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
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, num_classes)
    n = int(labels.size)
    correct = int(np.trace(cm))
    per_class, aucs = {}, []
    for c, name in enumerate(class_names):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = n - tp - fn - fp
        auc = roc_auc(probs[:, c], labels == c)
        if not np.isnan(auc):
            aucs.append(auc)
        precision = float(tp / (tp + fp)) if tp + fp else float("nan")
        recall = float(tp / (tp + fn)) if tp + fn else float("nan")
        per_class[name] = {
            "sensitivity": recall,
            "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
            "precision": precision,
            "recall": recall,
            "f1": float(2 * tp / (2 * tp + fp + fn)) if 2 * tp + fp + fn else float("nan"),
            "auc": auc,
            "support": int(tp + fn),
        }
    accuracy = correct / n if n else float("nan")
    return {
        "n": n,
        "accuracy": accuracy,
        "misclassification_rate": 1.0 - accuracy if n else float("nan"),
        "macro_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "per_class": per_class,
        "weighted_avg": _weighted_average(per_class),
        "confusion_matrix": cm.tolist(),
    }


def _weighted_average(per_class: dict) -> dict:
    """Support-weighted mean of per-class precision, recall and F1 (a nan of an unpredicted class counts as 0)."""
    support = np.asarray([v["support"] for v in per_class.values()], dtype=np.float64)
    out = {}
    for k in ("precision", "recall", "f1"):
        vals = np.nan_to_num(np.asarray([v[k] for v in per_class.values()], dtype=np.float64), nan=0.0)
        out[k] = float((vals * support).sum() / support.sum()) if support.sum() else float("nan")
    return out


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


class ClassificationMetrics(ProbabilityMetric):
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
            of per-sample tensors (MONAI's decollated output, e.g. ``monai.handlers.from_engine``).
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
        if key is not None and key not in self._KEYS:
            raise ValueError(f"key must be None or one of {self._KEYS}, got {key!r}.")
        if len(class_names) < 2:
            raise ValueError(f"need at least two class names, got {list(class_names)}.")
        self.class_names = list(class_names)
        super().__init__(len(self.class_names), key, prefix, output_transform, device)

    def _labels(self, labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        n = len(self.class_names)
        if labels.dim() > 1 and labels.shape[-1] == n and labels.shape[-1] > 1:
            labels = labels.argmax(dim=-1)  # one-hot
        return labels.reshape(-1).long()

    def _empty_labels(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.long)

    def report(self, probs: np.ndarray, labels: np.ndarray) -> dict:
        return classification_report(probs, labels, self.class_names)

    def flatten(self, report: dict, prefix: str) -> dict[str, float]:
        return flatten_report(report, prefix)
