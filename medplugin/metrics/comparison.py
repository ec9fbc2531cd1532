"""Comparing two models on the same test set: paired patient-level bootstrap and DeLong's test for AUROC.

- Paired bootstrap: each resample draws patients once and scores both models on the same drawn images (see
  :mod:`medplugin.metrics.bootstrap`), so the correlation between the models' errors is kept. The difference
  is ``B - A``; its interval is the percentile interval of the resampled differences, and the two-sided
  p-value is twice the smaller tail of the resampled differences at 0, ``min(1, 2 * min(#(d* <= 0) + 1,
  #(d* >= 0) + 1) / (R + 1))`` over R valid resamples (the test that rejects exactly when 0 is outside the
  percentile interval at that level; Efron & Tibshirani 1993, Sec. 16.4). Identical models give p = 1.
- DeLong's test (DeLong, DeLong & Clarke-Pearson, "Comparing the areas under two or more correlated receiver
  operating characteristic curves: a nonparametric approach", Biometrics 1988): the covariance of correlated
  AUROCs from their structural components, computed with the O(n log n) algorithm of Sun & Xu ("Fast
  implementation of DeLong's algorithm for comparing the areas under correlated receiver operating
  characteristic curves", IEEE Signal Processing Letters 2014). It treats images as independent (no patient
  clustering); the paired bootstrap is the patient-level test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from medplugin.metrics.bootstrap import Figure, PatientBootstrap, ci_key, percentile_interval

__all__ = ["midranks", "delong_covariance", "delong_test", "paired_bootstrap", "bootstrap_p_value"]


def midranks(x) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their mean rank (``scipy.stats.rankdata(method="average")``)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = xs.size
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], n]
    mean_rank = (starts + ends + 1) / 2.0  # ranks start..end-1, 1-based: mean = (start+1 + end) / 2
    ranks = np.empty(n)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def delong_covariance(scores, positives) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of K score vectors on the same cases and their DeLong covariance matrix (Sun & Xu 2014).

    Args:
        scores: ``(K, N)`` (or ``(N,)``) scores, higher = more likely positive.
        positives: ``(N,)`` booleans, with at least one positive and one negative.

    Returns:
        ``(aucs (K,), cov (K, K))``: ``cov = S10 / m + S01 / n`` with the sample covariances of the
        structural components over the m positives and the n negatives.
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    p = np.asarray(positives).astype(bool).reshape(-1)
    if s.shape[1] != p.size:
        raise ValueError(f"scores have shape {s.shape} but there are {p.size} labels.")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or infinite values.")
    m, n = int(p.sum()), int((~p).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least 2 positive and 2 negative cases, got {m} and {n}.")
    x, y = s[:, p], s[:, ~p]
    tx = np.stack([midranks(r) for r in x])
    ty = np.stack([midranks(r) for r in y])
    tz = np.stack([midranks(r) for r in np.concatenate([x, y], axis=1)])
    aucs = tz[:, :m].sum(1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n  # per positive: the share of negatives it outranks
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative: the share of positives that outrank it
    sx, sy = np.atleast_2d(np.cov(v01)), np.atleast_2d(np.cov(v10))  # (K, K) sample covariances, ddof 1
    return aucs, sx / m + sy / n


def delong_test(scores_a, scores_b, positives) -> dict:
    """DeLong's two-sided test of ``AUROC(B) - AUROC(A) = 0`` for two models scored on the same cases.

    Returns:
        ``{"auc_a", "auc_b", "difference" (B - A), "se", "z", "p"}``; identical score rankings give
        ``se`` 0, ``z`` 0 and ``p`` 1.
    """
    from scipy.stats import norm

    a = np.asarray(scores_a, dtype=np.float64).reshape(-1)
    b = np.asarray(scores_b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"the two models scored {a.size} and {b.size} cases; they must score the same cases.")
    aucs, cov = delong_covariance(np.stack([a, b]), positives)
    diff = float(aucs[1] - aucs[0])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se <= 1e-15:
        z, pv = 0.0, 1.0 if abs(diff) < 1e-15 else 0.0
    else:
        z = diff / se
        pv = float(2.0 * norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": se, "z": float(z), "p": pv}


def bootstrap_p_value(differences) -> float:
    """Two-sided p-value of a zero difference from resampled differences (see the module docstring)."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    low, high = int((d <= 0).sum()), int((d >= 0).sum())
    return float(min(1.0, 2.0 * (min(low, high) + 1) / (d.size + 1)))


def paired_bootstrap(figures_a: Mapping[str, Figure], figures_b: Mapping[str, Figure], patient_ids: Sequence | None,
                     n_images: int | None = None, n_resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, dict]:
    """Paired patient-level bootstrap of ``B - A`` for every figure both runs have.

    Args:
        figures_a, figures_b: ``{name: figure}`` of the two runs over the same N images in the same order
            (see :mod:`medplugin.metrics.bootstrap`); the names both have are compared.
        patient_ids: one per image (``None``: images resampled independently).
        n_images, n_resamples, seed, level: as :func:`medplugin.metrics.bootstrap.bootstrap_intervals`.

    Returns:
        ``{name: {"a", "b", "difference", "ci95": [low, high], "p", "n_valid"}}``; ``n_valid`` resamples
        defined both figures (the others are left out).
    """
    names = [k for k in figures_a if k in figures_b]
    if not names:
        raise ValueError(f"the runs have no figure in common (A: {sorted(figures_a)}, B: {sorted(figures_b)}).")
    boot = PatientBootstrap(patient_ids, n_images, n_resamples, seed)
    ones = np.ones((1, boot.n_images))
    point = {k: (float(figures_a[k](ones)[0]), float(figures_b[k](ones)[0])) for k in names}
    diffs: dict[str, list] = {k: [] for k in names}
    for w in boot.blocks():
        for k in names:
            diffs[k].append(figures_b[k](w) - figures_a[k](w))
    key = ci_key(level)
    out = {}
    for k in names:
        d = np.concatenate(diffs[k])
        a, b = point[k]
        defined = math.isfinite(a) and math.isfinite(b)
        ci = percentile_interval(d, level) if defined else (float("nan"), float("nan"))
        out[k] = {"a": a, "b": b, "difference": b - a if defined else float("nan"), key: [ci[0], ci[1]],
                  "p": bootstrap_p_value(d) if defined else float("nan"), "n_valid": int(np.isfinite(d).sum())}
    return out
