"""Reliability diagram: observed frequency against confidence per bin, before and after temperature scaling."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from medplugin.utils import atomic_write
from medplugin.visualize.plots import _figure

__all__ = ["plot_reliability"]


def plot_reliability(curves: Mapping[str, Mapping], path: str | os.PathLike, title: str = "reliability diagram",
                     ece: Mapping[str, float] | None = None) -> None:
    """Save a reliability diagram as PNG: one line per curve, the diagonal, and the bin counts below.

    Args:
        curves: ``{label: reliability_bins(...)}`` (:func:`medplugin.metrics.calibration.reliability_bins`), e.g.
            ``{"before": ..., "after temperature scaling": ...}``, all with the same bins.
        path: the PNG to write (atomically).
        title: the figure title.
        ece: ``{label: ECE}`` shown in the legend.
    """
    if not curves:
        raise ValueError("plot_reliability needs at least one curve.")
    plt = _figure()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    first = next(iter(curves.values()))
    edges = np.asarray(first["edges"], dtype=np.float64)
    width = np.diff(edges)
    for i, (label, c) in enumerate(curves.items()):
        conf, freq = np.asarray(c["confidence"]), np.asarray(c["frequency"])
        keep = np.isfinite(conf) & np.isfinite(freq)
        text = label if not ece or label not in ece else f"{label} (ECE {ece[label]:.3f})"
        ax.plot(conf[keep], freq[keep], "o-", lw=1.5, ms=4, label=text)
        counts = np.asarray(c["count"], dtype=np.float64)
        off = (i - (len(curves) - 1) / 2) * width / (len(curves) + 1)
        hx.bar(edges[:-1] + width / 2 + off, counts, width=width / (len(curves) + 1), label=label)
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    hx.set_xlabel("predicted probability (confidence)")
    hx.set_ylabel("count")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
