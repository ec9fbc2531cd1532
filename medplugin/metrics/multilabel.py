"""Multi-label classification metrics (e.g. the 14 ChestX-ray14 findings): per-label AUROC and their mean.

One functional core, :func:`multilabel_report`, used by the ignite metric (every validation epoch) and by the
evaluation report writer, so the numbers in TensorBoard and in ``metrics.json`` are computed the same way.
CheXNet (Rajpurkar et al. 2017, "CheXNet: Radiologist-Level Pneumonia Detection on Chest X-Rays with Deep
Learning") and Wang et al. 2017 (ChestX-ray8) report exactly these: the AUROC of each finding and their mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from medplugin.metrics.base import ReportMetric
from medplugin.metrics.classification import roc_auc, sensitivity_specificity

__all__ = ["MultiLabelAUROC", "flatten_multilabel_report", "multilabel_report"]


def _as_2d(name: str, x: np.ndarray, n_labels: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1 and x.size == 0:
        x = x.reshape(0, n_labels)
    if x.ndim != 2 or x.shape[1] != n_labels:
        raise ValueError(f"{name} must be (N, {n_labels}), got shape {x.shape}.")
    return x


def multilabel_report(
    probs: np.ndarray, labels: np.ndarray, label_names: Sequence[str], threshold: float | Sequence[float] = 0.5
) -> dict:
    """Per-label AUROC, their mean, and threshold statistics of a multi-label classifier.

    Args:
        probs: ``(N, L)`` per-label probabilities (or any scores for the AUROC; the thresholds need
            probabilities).
        labels: ``(N, L)`` 0/1 ground truth.
        label_names: the L names, in output order.
        threshold: decision threshold for sensitivity/specificity, one for all labels or one per label.

    Returns:
        dict with ``n``, ``mean_auroc`` (mean over the labels whose AUROC is defined, i.e. with positive and
        negative images; ``nan`` if none), ``n_auroc_defined`` and ``per_label`` {name: ``auroc``,
        ``positives``, ``prevalence``, ``sensitivity``, ``specificity``, ``threshold``}.

    Raises:
        ValueError: shapes that do not match ``label_names``, labels other than 0/1, bad thresholds.
    """
    names = list(label_names)
    n_labels = len(names)
    if n_labels < 1:
        raise ValueError("label_names must not be empty.")
    probs = _as_2d("probs", probs, n_labels)
    labels = _as_2d("labels", labels, n_labels)
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(f"{probs.shape[0]} predictions but {labels.shape[0]} label rows.")
    if labels.size and not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(np.unique(labels).tolist()))[:6]}.")
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64).ravel(), (n_labels,)) if np.ndim(threshold) == 0 \
        else np.asarray(threshold, dtype=np.float64)
    if thr.shape != (n_labels,) or not np.all((thr >= 0) & (thr <= 1)):
        raise ValueError(f"threshold must be one number or {n_labels} numbers in [0, 1], got {threshold!r}.")
    pos = labels.astype(bool)
    per_label, aucs = {}, []
    n = int(labels.shape[0])
    for j, name in enumerate(names):
        auc = roc_auc(probs[:, j], pos[:, j])
        if not math.isnan(auc):
            aucs.append(auc)
        sens, spec = sensitivity_specificity(probs[:, j], pos[:, j], thr[j])
        per_label[name] = {
            "auroc": auc,
            "positives": int(pos[:, j].sum()),
            "prevalence": float(pos[:, j].mean()) if n else float("nan"),
            "sensitivity": sens,
            "specificity": spec,
            "threshold": float(thr[j]),
        }
    return {
        "n": n,
        "mean_auroc": float(np.mean(aucs)) if aucs else float("nan"),
        "n_auroc_defined": len(aucs),
        "per_label": per_label,
    }


def flatten_multilabel_report(report: dict, prefix: str = "") -> dict[str, float]:
    """Scalars of :func:`multilabel_report` as ``{prefix + "mean_auroc": ..., prefix + name + "_auroc": ...}``."""
    out = {f"{prefix}mean_auroc": float(report["mean_auroc"])}
    for name, vals in report["per_label"].items():
        out[f"{prefix}{name}_auroc"] = float(vals["auroc"])
    return out


class MultiLabelAUROC(ReportMetric):
    """Ignite metric: per-label AUROC and their mean, accumulated over an epoch (gathered over ranks).

    With ``key="mean_auroc"`` (the default) ``compute`` returns the mean AUROC, a scalar usable as the key
    metric of checkpointing (``val_mean_auroc``). With ``key=None`` it returns the flat dict of
    :func:`flatten_multilabel_report` (``<prefix>mean_auroc`` and ``<prefix><label>_auroc`` per label), which
    ignite stores as separate ``engine.state.metrics`` entries, so MONAI's ``TensorBoardStatsHandler`` writes
    every one of them. A label without both positive and negative images has AUROC ``nan`` and is left out of
    the mean.

    Args:
        label_names: label names in output order.
        key: ``"mean_auroc"`` or ``None``.
        prefix: prepended to every name of the flat dict (e.g. ``"val_"``).
        output_transform: maps the engine output to ``(probs, labels)``; each a batch tensor or a list of
            per-sample tensors (MONAI's decollated output, e.g. ``monai.handlers.from_engine``).
        device: where ignite keeps the epoch's tensors.
    """

    _KEYS = ("mean_auroc",)

    def __init__(
        self,
        label_names: Sequence[str],
        key: str | None = "mean_auroc",
        prefix: str = "",
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(label_names) < 1:
            raise ValueError("label_names must not be empty.")
        self.label_names = list(label_names)
        super().__init__(len(self.label_names), key, self._KEYS, prefix, output_transform, device)

    def _labels(self, labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        n = len(self.label_names)
        labels = labels.float()
        if probs.numel() % n or labels.numel() != probs.numel():
            raise ValueError(f"expected (batch, {n}) probabilities and labels, got shapes {tuple(probs.shape)} "
                             f"and {tuple(labels.shape)}.")
        return labels.reshape(-1, n)

    def _empty_labels(self) -> torch.Tensor:
        return torch.zeros(0, len(self.label_names))

    def report(self, probs: np.ndarray, labels: np.ndarray) -> dict:
        return multilabel_report(probs, labels, self.label_names)

    def flatten(self, report: dict, prefix: str) -> dict[str, float]:
        return flatten_multilabel_report(report, prefix)
