"""Patient-level bootstrap confidence intervals for evaluation figures, vectorised over resamples.

A resample draws as many patients as the test set has, with replacement, and keeps all the images of each
drawn patient (a patient drawn twice counts twice): images of one patient move together, so the interval
reflects that follow-up images of one patient are not independent (the cluster bootstrap; Davison & Hinkley,
"Bootstrap Methods and their Application", 1997, Sec. 3.8). The interval is the percentile interval (Efron &
Tibshirani, "An Introduction to the Bootstrap", 1993, Ch. 13) of the figure over the resamples.

Every figure is a function of a weight matrix: ``figure(w)`` takes ``(B, N)`` image weights (how many times
each image is in each of B resamples; all ones for the test set itself) and returns ``(B,)`` values. The
builders here (:func:`auroc_figure`, :func:`mean_figure`, :func:`ratio_figure`, :func:`kappa_figure`,
:func:`macro_figure`) compute the figure for a whole block of resamples at once; AUROC uses the scores sorted
once per class, so 1,000 resamples of a ChestX-ray14-size test set (25,596 images, 14 findings) take seconds.

Undefined resamples: a figure that is undefined in a resample (an AUROC whose class has no positive or no
negative image in it, a PPV with no positive calls) is ``nan`` there; that resample is left out of that
figure's interval and counted (``n_valid``). A macro mean (:func:`macro_figure`) is ``nan`` in a resample
where any of its classes is undefined, so it always averages the same classes as on the test set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from medplugin.metrics._inputs import as_patient_index

__all__ = [
    "Figure",
    "PatientBootstrap",
    "auroc_figure",
    "mean_figure",
    "ratio_figure",
    "kappa_figure",
    "macro_figure",
    "rate_figures",
    "headline_figures",
    "bootstrap_intervals",
    "bootstrap_metric",
    "percentile_interval",
    "ci_key",
    "ci_entries",
    "format_ci",
    "format_interval",
]

logger = logging.getLogger(__name__)

Figure = Callable[[np.ndarray], np.ndarray]
_BLOCK_ELEMENTS = 4_000_000  # (resamples x images) per block: 32 MB of float64 weights


def _memo(figure: Figure) -> Figure:
    """The figure, remembering its result for the last weight matrix (a macro mean reuses its parts' values)."""
    last: list = [None, None]

    def cached(w: np.ndarray) -> np.ndarray:
        if last[0] is not w:
            last[0], last[1] = w, figure(w)
        return last[1]

    return cached


class PatientBootstrap:
    """Seeded patient-level resampling weights, generated block by block.

    Args:
        patient_ids: one id per image (any hashable printable value); ``None``: every image is its own
            patient (an image-level bootstrap).
        n_images: the number of images (needed when ``patient_ids`` is ``None``; checked otherwise).
        n_resamples: B, at least 1 (1,000 by default, as the issue's ``--bootstrap N``).
        seed: the seed of the local ``numpy.random.Generator``; the same seed gives the same resamples.
    """

    def __init__(self, patient_ids: Sequence | None, n_images: int | None = None, n_resamples: int = 1000,
                 seed: int = 0) -> None:
        if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
            raise ValueError(f"n_resamples must be an int >= 1, got {n_resamples!r}.")
        self.groups, self.n_patients = as_patient_index(patient_ids, n_images)
        if self.n_patients == 0:
            raise ValueError("the bootstrap needs at least one image.")
        self.n_images = int(self.groups.size)
        self.n_resamples = int(n_resamples)
        self.seed = seed
        self.block = max(1, min(self.n_resamples, _BLOCK_ELEMENTS // max(self.n_images, self.n_patients)))

    def blocks(self) -> Iterator[np.ndarray]:
        """Yield ``(b, N)`` float64 image weights, b <= ``block``, B rows in all (the same for the same seed)."""
        rng = np.random.default_rng(self.seed)
        p = self.n_patients
        done = 0
        while done < self.n_resamples:
            b = min(self.block, self.n_resamples - done)
            draws = rng.integers(0, p, size=(b, p))
            counts = np.bincount((draws + (np.arange(b) * p)[:, None]).ravel(), minlength=b * p).reshape(b, p)
            yield counts[:, self.groups].astype(np.float64)
            done += b


def auroc_figure(scores, positives) -> Figure:
    """AUROC of one class as a figure (Mann-Whitney with ties counted half; ``nan`` without both classes).

    The negatives are sorted once and every positive's rank among them is found once; a block of resamples
    then costs a cumulative sum of the negatives' weights and a weighted sum over the positives.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    p = np.asarray(positives).astype(bool).reshape(-1)
    if s.shape != p.shape:
        raise ValueError(f"{s.size} scores but {p.size} labels.")
    pos_idx = np.flatnonzero(p)
    neg_idx = np.flatnonzero(~p)
    neg_idx = neg_idx[np.argsort(s[neg_idx], kind="mergesort")]
    neg_sorted = s[neg_idx]
    lower = np.searchsorted(neg_sorted, s[pos_idx], side="left")  # negatives strictly below each positive
    upper = np.searchsorted(neg_sorted, s[pos_idx], side="right")  # ... or tied with it
    ties = bool(np.any(upper > lower))

    def figure(w: np.ndarray) -> np.ndarray:
        cum = np.zeros((w.shape[0], neg_idx.size + 1))
        np.cumsum(w[:, neg_idx], axis=1, out=cum[:, 1:])
        below = cum[:, lower]
        if ties:
            below += 0.5 * (cum[:, upper] - below)
        wp = w[:, pos_idx]
        num = np.einsum("ij,ij->i", wp, below)
        den = wp.sum(1) * cum[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    return _memo(figure)


def mean_figure(values) -> Figure:
    """The weighted mean of per-image values (accuracy from 0/1 correctness, mean Dice from per-case Dice)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise ValueError("mean_figure: values hold NaN or infinite entries; drop undefined cases first.")

    def figure(w: np.ndarray) -> np.ndarray:
        tot = w.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(tot > 0, (w @ v) / np.where(tot > 0, tot, 1.0), np.nan)

    return _memo(figure)


def ratio_figure(numerator, denominator) -> Figure:
    """``sum(w * numerator) / sum(w * denominator)`` of 0/1 per-image indicators (``nan`` when 0/0).

    Sensitivity is ``ratio_figure(call & positive, positive)``; see :func:`rate_figures`.
    """
    a = np.asarray(numerator, dtype=np.float64).reshape(-1)
    d = np.asarray(denominator, dtype=np.float64).reshape(-1)
    if a.shape != d.shape:
        raise ValueError(f"numerator has {a.size} entries but denominator {d.size}.")

    def figure(w: np.ndarray) -> np.ndarray:
        den = w @ d
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (w @ a) / np.where(den > 0, den, 1.0), np.nan)

    return _memo(figure)


def rate_figures(calls, positives, name: str | Sequence[str] = "") -> dict[str, Figure]:
    """Sensitivity, specificity, PPV and NPV of 0/1 ``calls`` as ``{name + "_sensitivity": figure, ...}``.

    ``calls`` and ``positives`` are ``(N,)`` with one ``name`` (``""``: no prefix), or ``(N, C)`` with C names;
    the counts of all C classes come from one matrix product per block of resamples.
    """
    k, p = np.asarray(calls).astype(bool), np.asarray(positives).astype(bool)
    if k.shape != p.shape:
        raise ValueError(f"calls have shape {k.shape} but positives {p.shape}.")
    if k.ndim == 1:
        k, p, names = k[:, None], p[:, None], [name]
    else:
        names = [name] if isinstance(name, str) else list(name)
        if len(names) != k.shape[1]:
            raise ValueError(f"{k.shape[1]} columns of calls but {len(names)} names {names}.")
    c = k.shape[1]
    # columns: true positives, positives, true negatives, negatives, calls, non-calls of each class
    mat = np.concatenate([k & p, p, ~k & ~p, ~p, k, ~k], axis=1).astype(np.float64)
    counts = _memo(lambda w: w @ mat)

    def rate(num: int, den: int) -> Figure:
        def figure(w: np.ndarray) -> np.ndarray:
            m = counts(w)
            d = m[:, den]
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(d > 0, m[:, num] / np.where(d > 0, d, 1.0), np.nan)

        return figure

    out: dict[str, Figure] = {}
    for i, nm in enumerate(names):
        pre = f"{nm}_" if nm else ""
        out[f"{pre}sensitivity"] = rate(i, c + i)
        out[f"{pre}specificity"] = rate(2 * c + i, 3 * c + i)
        out[f"{pre}ppv"] = rate(i, 4 * c + i)
        out[f"{pre}npv"] = rate(2 * c + i, 5 * c + i)
    return out


def kappa_figure(labels, preds, num_classes: int, weighting: str | None = "quadratic") -> Figure:
    """Cohen's kappa of class indices (quadratic weights by default, the grading score; ``None``: unweighted).

    Kappa is 1 when the weighted expected disagreement is 0 and the raters agree everywhere (as the
    project's ``quadratic_weighted_kappa``), ``nan`` for an empty resample.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    q = np.asarray(preds, dtype=np.int64).reshape(-1)
    k = int(num_classes)
    if k < 2 or y.shape != q.shape:
        raise ValueError(f"kappa needs num_classes >= 2 and as many predictions as labels, got {num_classes!r}, "
                         f"{y.size} labels, {q.size} predictions.")
    for nm, v in (("labels", y), ("preds", q)):
        if v.size and (v.min() < 0 or v.max() >= k):
            raise ValueError(f"{nm} must be in [0, {k - 1}], got values {sorted(set(v.tolist()))[:6]}.")
    if weighting not in ("quadratic", "linear", None):
        raise ValueError(f"weighting must be 'quadratic', 'linear' or None, got {weighting!r}.")
    idx = np.arange(k)
    dist = np.abs(idx[:, None] - idx[None, :]).astype(np.float64)
    wmat = (dist / (k - 1)) ** 2 if weighting == "quadratic" else dist / (k - 1) if weighting == "linear" \
        else (dist > 0).astype(np.float64)
    cell = y * k + q
    onehot = np.zeros((y.size, k * k))
    onehot[np.arange(y.size), cell] = 1.0

    def figure(w: np.ndarray) -> np.ndarray:
        obs = (w @ onehot).reshape(-1, k, k)
        n = obs.sum((1, 2))
        safe_n = np.where(n > 0, n, 1.0)
        exp = obs.sum(2)[:, :, None] * obs.sum(1)[:, None, :] / safe_n[:, None, None]
        do, de = (obs * wmat).sum((1, 2)), (exp * wmat).sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            kap = np.where(de > 0, 1.0 - do / np.where(de > 0, de, 1.0), np.where(do == 0, 1.0, 0.0))
        return np.where(n > 0, kap, np.nan)

    return _memo(figure)


def macro_figure(figures: Sequence[Figure]) -> Figure:
    """The mean of several figures (e.g. the AUROCs of the classes defined on the test set); ``nan`` in a
    resample where any of them is undefined."""
    figs = list(figures)
    if not figs:
        raise ValueError("macro_figure needs at least one figure.")

    def figure(w: np.ndarray) -> np.ndarray:
        return np.mean(np.stack([f(w) for f in figs], axis=0), axis=0)

    return _memo(figure)


def headline_figures(scores=None, labels=None, class_names: Sequence[str] | None = None, kind: str = "multilabel",
                     calls=None, kappa: str | None = None, dice=None) -> dict[str, Figure]:
    """The figures an evaluation reports with intervals, named as in ``metrics.json``.

    Args:
        scores: ``(N, C)`` probabilities (``None`` for a segmentation run).
        labels: ``(N,)`` class indices (multi-class) or ``(N, C)`` 0/1 (multi-label; one-hot for multi-class).
        class_names: the C names.
        kind: ``multiclass`` (softmax, one label per image) or ``multilabel`` (a sigmoid per finding; one
            column is a binary model).
        calls: ``(N, C)`` 0/1 calls at the stored operating points (adds sensitivity, specificity, PPV, NPV).
        kappa: ``quadratic``, ``linear`` or ``unweighted``: add Cohen's kappa of the argmax (multi-class).
        dice: ``(N,)`` per-case Dice (adds ``mean_dice``).

    Returns:
        multi-class: ``accuracy``, ``<class>_auroc``, ``macro_auroc``; multi-label: ``<finding>_auroc``,
        ``mean_auroc``; with calls ``<class>_sensitivity|specificity|ppv|npv``; ``kappa``; ``mean_dice``.
        Macro/mean AUROC averages the classes whose AUROC is defined on these images (see
        :func:`macro_figure`).
    """
    from medplugin.metrics._inputs import as_positives, as_scores, class_names_for

    if kind not in ("multiclass", "multilabel"):
        raise ValueError(f"kind must be 'multiclass' or 'multilabel', got {kind!r}.")
    figs: dict[str, Figure] = {}
    if scores is not None:
        s = as_scores(scores)
        names = class_names_for(class_names, s.shape[1])
        pos = as_positives(labels, s.shape[1], n=s.shape[0])
        if kind == "multiclass":
            if s.shape[1] < 2 or not (pos.sum(1) == 1).all():
                raise ValueError("multi-class figures need at least 2 classes and exactly one label per image.")
            figs["accuracy"] = mean_figure(pos[np.arange(s.shape[0]), s.argmax(1)])
        aucs = {}
        for c, name in enumerate(names):
            aucs[f"{name}_auroc"] = auroc_figure(s[:, c], pos[:, c])
        figs.update(aucs)
        defined = [f for c, f in enumerate(aucs.values()) if pos[:, c].any() and not pos[:, c].all()]
        if defined:
            figs["macro_auroc" if kind == "multiclass" else "mean_auroc"] = macro_figure(defined)
        if calls is not None:
            k = np.asarray(calls).astype(bool)
            if k.shape != pos.shape:
                raise ValueError(f"calls have shape {k.shape}, expected {pos.shape}.")
            figs.update(rate_figures(k, pos, names))
        if kappa is not None:
            if kind != "multiclass":
                raise ValueError("kappa is a figure of multi-class (graded) runs.")
            weighting = {"quadratic": "quadratic", "linear": "linear", "unweighted": None}.get(kappa, "bad")
            if weighting == "bad":
                raise ValueError(f"kappa must be 'quadratic', 'linear' or 'unweighted', got {kappa!r}.")
            figs["kappa"] = kappa_figure(pos.argmax(1), s.argmax(1), s.shape[1], weighting)
    if dice is not None:
        figs["mean_dice"] = mean_figure(dice)
    if not figs:
        raise ValueError("headline_figures needs scores and labels, or per-case dice.")
    return figs


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the finite ``values`` (``(nan, nan)`` when none is finite)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(v, [a, 1.0 - a])
    return float(lo), float(hi)


def ci_key(level: float = 0.95) -> str:
    """The key suffix of an interval: ``ci95`` for a 95% interval."""
    return f"ci{round(level * 100):d}"


def bootstrap_intervals(figures: Mapping[str, Figure], patient_ids: Sequence | None, n_images: int | None = None,
                        n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                        return_samples: bool = False) -> dict[str, dict]:
    """Point value and patient-level percentile interval of every figure.

    Args:
        figures: ``{name: figure}`` (see the module docstring), all over the same N images.
        patient_ids: one per image (``None``: images resampled independently).
        n_images: N, when ``patient_ids`` is ``None``.
        n_resamples, seed: see :class:`PatientBootstrap`.
        level: the interval's coverage (0.95).
        return_samples: also return each figure's ``(B,)`` resampled values under ``"samples"``.

    Returns:
        ``{name: {"value", "ci95": [low, high], "n_valid"}}``: ``n_valid`` resamples defined the figure (the
        others are left out, see the module docstring); an undefined value gets ``[nan, nan]``.
    """
    boot = PatientBootstrap(patient_ids, n_images, n_resamples, seed)
    ones = np.ones((1, boot.n_images))
    values = {k: float(f(ones)[0]) for k, f in figures.items()}
    samples = {k: [] for k in figures}
    for w in boot.blocks():
        for k, f in figures.items():
            samples[k].append(f(w))
    key = ci_key(level)
    out = {}
    for k in figures:
        s = np.concatenate(samples[k])
        n_valid = int(np.isfinite(s).sum())
        ci = percentile_interval(s, level) if math.isfinite(values[k]) else (float("nan"), float("nan"))
        if math.isfinite(values[k]) and n_valid < boot.n_resamples:
            logger.info("%s: undefined in %d of %d resamples (left out of its interval)", k,
                        boot.n_resamples - n_valid, boot.n_resamples)
        out[k] = {"value": values[k], key: [ci[0], ci[1]], "n_valid": n_valid}
        if return_samples:
            out[k]["samples"] = s
    return out


def bootstrap_metric(metric: Callable[[np.ndarray, np.ndarray], float], scores, labels,
                     patient_ids: Sequence | None, n_resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Patient-level interval of any ``metric(scores, labels) -> float`` (a Python loop over resamples).

    For figures without a vectorised builder; each resample calls ``metric`` on the rows drawn (a patient
    drawn twice gives its rows twice). Same resamples as :func:`bootstrap_intervals` for the same seed.

    Returns:
        ``{"value", "ci95": [low, high], "n_valid"}`` (a resample where ``metric`` returns nan is left out).
    """
    s, y = np.asarray(scores), np.asarray(labels)
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"{s.shape[0]} score rows but {y.shape[0]} labels.")
    boot = PatientBootstrap(patient_ids, s.shape[0], n_resamples, seed)
    value = float(metric(s, y))
    vals = []
    rows = np.arange(boot.n_images)
    for w in boot.blocks():
        for wi in w.astype(np.int64):
            idx = np.repeat(rows, wi)
            vals.append(float(metric(s[idx], y[idx])))
    v = np.asarray(vals)
    lo, hi = percentile_interval(v, level) if math.isfinite(value) else (float("nan"), float("nan"))
    return {"value": value, ci_key(level): [lo, hi], "n_valid": int(np.isfinite(v).sum())}


def ci_entries(results: Mapping[str, Mapping], level: float = 0.95) -> dict[str, object]:
    """Flatten :func:`bootstrap_intervals` for ``metrics.json``: ``{K: value, K + "_ci95": [low, high]}``."""
    key = ci_key(level)
    out: dict[str, object] = {}
    for k, r in results.items():
        out[k] = r["value"]
        out[f"{k}_{key}"] = list(r[key])
    return out


def format_interval(interval: Sequence[float | None], digits: int = 3) -> str:
    """``"(0.884-0.936)"``; ``" to "`` between bounds when one is negative; ``"n/a"`` for an undefined interval."""
    lo, hi = interval
    if lo is None or hi is None or not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        return "n/a"
    sep = " to " if min(float(lo), float(hi)) < 0 else "-"
    return f"({float(lo):.{digits}f}{sep}{float(hi):.{digits}f})"


def format_ci(value: float | None, interval: Sequence[float | None] | None = None, digits: int = 3) -> str:
    """``"0.912 (0.884-0.936)"`` for Markdown/CSV tables (``"n/a"`` for an undefined value).

    Args:
        value: the figure.
        interval: ``[low, high]``, or ``None`` for the value alone; an undefined interval prints the value alone.
        digits: decimals.
    """
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    text = f"{float(value):.{digits}f}"
    if interval is None:
        return text
    ci = format_interval(interval, digits)
    return text if ci == "n/a" else f"{text} {ci}"
