"""Evaluation plots: confusion matrix and one-vs-rest ROC curves."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from medplugin.metrics.classification import roc_auc, roc_curve
from medplugin.utils import atomic_write

__all__ = ["plot_confusion_matrix", "plot_roc", "plot_pr"]


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def curve_styles(n: int) -> list[dict]:
    """Line styles for ``n`` curves, no two alike: matplotlib's 10 colours, then again dashed, then dotted (its
    default cycle repeats colours after 10, so 14 chest findings would share them)."""
    dashes = ("-", "--", ":", "-.")
    return [{"color": f"C{i % 10}", "ls": dashes[(i // 10) % len(dashes)]} for i in range(n)]


def _save_curves(plt, fig, ax, labels: tuple[str, str], title: str, legend: str, path: str | os.PathLike) -> None:
    """Label the axes of a curve plot on [0, 1], add its title and legend, save it as PNG and close it."""
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.legend(loc=legend, fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    """Save a confusion matrix (rows true, columns predicted) with counts and row percentages as PNG."""
    plt = _figure()
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ax.imshow(cm / rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            frac = cm[i, j] / rows[i, 0]
            ax.text(j, i, f"{cm[i, j]}\n{100 * frac:.1f}%", ha="center", va="center",
                    color="white" if frac > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion matrix (n={int(cm.sum())})")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def plot_roc(scores: np.ndarray, positives: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
             title: str = "ROC, one vs rest") -> None:
    """Save one ROC curve per class (``scores`` and ``positives`` are ``(N, C)``) with AUCs in the legend."""
    plt = _figure()
    scores, positives = np.asarray(scores), np.asarray(positives).astype(bool)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    styles = curve_styles(len(class_names))
    for c, name in enumerate(class_names):
        if positives[:, c].all() or not positives[:, c].any():
            continue
        fpr, tpr, _ = roc_curve(scores[:, c], positives[:, c])
        ax.plot(fpr, tpr, lw=1.5, **styles[c], label=f"{name} (AUC {roc_auc(scores[:, c], positives[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    _save_curves(plt, fig, ax, ("1 - specificity (false positive rate)", "sensitivity (true positive rate)"), title,
                 "lower right", path)


def plot_pr(scores: np.ndarray, positives: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
            title: str = "precision-recall") -> None:
    """Save one precision-recall curve per column of ``scores``/``positives`` (``(N, C)``), average precision
    in the legend and the prevalence as a dashed line."""
    from medplugin.metrics.grading import pr_auc

    plt = _figure()
    scores, positives = np.asarray(scores, np.float64), np.asarray(positives).astype(bool)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    styles = curve_styles(len(class_names))
    for c, name in enumerate(class_names):
        s, p = scores[:, c], positives[:, c]
        if not p.any():
            continue
        order = np.argsort(-s, kind="mergesort")
        so, po = s[order], p[order]
        distinct = np.r_[np.flatnonzero(np.diff(so)), so.size - 1]
        tps = np.cumsum(po)[distinct]
        recall, precision = np.r_[0.0, tps / p.sum()], np.r_[1.0, tps / (distinct + 1)]
        ax.step(recall, precision, where="post", lw=1.5, **styles[c], label=f"{name} (AP {pr_auc(s, p):.3f})")
        ax.axhline(p.mean(), color="k", ls="--", lw=0.8)
    _save_curves(plt, fig, ax, ("recall (sensitivity)", "precision (positive predictive value)"), title, "lower left",
                 path)
