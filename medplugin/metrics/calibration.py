"""Temperature scaling and the expected calibration error (ECE).

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides the logits by
one temperature T > 0 fitted on validation logits by minimising the negative log-likelihood; the ranking and the
argmax are unchanged, so AUROC and accuracy are too. Softmax models get one T; a sigmoid multi-label model one
T per finding (each finding is its own binary problem). The NLL is convex in 1/T, so a bounded scalar search
(Brent's method on log T within ``bounds``) finds the minimum deterministically.

The ECE is MONAI's ``CalibrationErrorMetric`` (equal-width bins, weighted by the bin counts): for softmax the
top-label ECE of Guo et al. (confidence = the highest probability, correct = the argmax is the label); for
sigmoid the ECE of each finding's probability against its 0/1 label, and their mean. 15 bins as Guo et al.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from medplugin.metrics._inputs import as_positives, as_scores, class_names_for

__all__ = [
    "MODES",
    "fit_temperature",
    "apply_temperature",
    "probabilities_to_logits",
    "negative_log_likelihood",
    "expected_calibration_error",
    "reliability_bins",
    "calibration_report",
]

logger = logging.getLogger(__name__)

MODES = ("softmax", "sigmoid")
_BOUNDS = (0.05, 20.0)


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (softmax: one label per image; sigmoid: multi-label), "
                         f"got {mode!r}.")
    return mode


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _targets(labels, logits: np.ndarray, mode: str) -> np.ndarray:
    if mode == "softmax" and logits.shape[1] < 2:
        raise ValueError(f"softmax logits need at least 2 columns, got shape {logits.shape}.")
    y = as_positives(labels, logits.shape[1], n=logits.shape[0])
    if mode == "softmax" and y.size and not (y.sum(1) == 1).all():
        raise ValueError("softmax labels need exactly one class per image (class indices or one-hot rows); "
                         f"rows {np.flatnonzero(y.sum(1) != 1)[:5].tolist()} have {sorted(set(y.sum(1).tolist()))}.")
    return y


def _nll_softmax(beta: float, z: np.ndarray, y: np.ndarray) -> float:
    bz = beta * z
    m = bz.max(1)
    lse = m + np.log(np.exp(bz - m[:, None]).sum(1))
    return float(np.mean(lse - bz[y]))


def _nll_sigmoid(beta: float, z: np.ndarray, y: np.ndarray) -> float:
    bz = beta * z
    return float(np.mean(np.logaddexp(0.0, bz) - y * bz))


def negative_log_likelihood(logits, labels, mode: str = "softmax", temperature=1.0) -> float | np.ndarray:
    """Mean NLL of ``logits / temperature`` (softmax: one number; sigmoid: one per finding)."""
    mode = _mode(mode)
    z = as_scores(logits, "logits")
    y = _targets(labels, z, mode)
    t = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (z.shape[1],)) if mode == "sigmoid" else None
    if mode == "softmax":
        return _nll_softmax(1.0 / float(temperature), z, y)
    return np.asarray([_nll_sigmoid(1.0 / t[c], z[:, c], y[:, c]) for c in range(z.shape[1])])


def _fit_one(nll, bounds: tuple[float, float], what: str) -> float:
    from scipy.optimize import minimize_scalar

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(lambda lt: nll(math.exp(-lt)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-7, "maxiter": 500})
    t = float(math.exp(res.x))
    if min(res.x - lo, hi - res.x) < 1e-3:
        logger.warning("temperature of %s reached the search bound %.3g (bounds %s): the validation logits "
                       "may separate the classes perfectly", what, t, bounds)
    return t


def fit_temperature(logits, labels, mode: str = "softmax", bounds: tuple[float, float] = _BOUNDS,
                    class_names: Sequence[str] | None = None) -> float | list[float]:
    """Fit temperature scaling on validation logits by minimising the NLL (deterministic).

    Args:
        logits: ``(N, C)`` validation logits (pre-softmax / pre-sigmoid). Only probabilities at hand: see
            :func:`probabilities_to_logits`.
        labels: ``(N,)`` class indices (softmax), or ``(N, C)`` 0/1 (sigmoid; ``(N,)`` 0/1 for one finding).
        mode: ``softmax`` (one T) or ``sigmoid`` (one T per finding).
        bounds: the range searched for T.
        class_names: names for the log messages.

    Returns:
        T (softmax) or a list of C temperatures (sigmoid). A finding without both positive and negative
        validation images keeps T = 1 (logged): its NLL has no finite minimum.
    """
    mode = _mode(mode)
    lo, hi = (float(b) for b in bounds)
    if not 0 < lo < 1 < hi:
        raise ValueError(f"bounds must satisfy 0 < low < 1 < high, got {bounds!r}.")
    z = as_scores(logits, "logits")
    if z.shape[0] == 0:
        raise ValueError("fit_temperature needs at least one validation image.")
    y = _targets(labels, z, mode)
    if mode == "softmax":
        return _fit_one(lambda b: _nll_softmax(b, z, y), (lo, hi), "the softmax")
    names = class_names_for(class_names, z.shape[1])
    temps = []
    for c, name in enumerate(names):
        yc = y[:, c].astype(np.float64)
        if yc.min() == yc.max():
            logger.warning("temperature of %r kept at 1: no %s validation images", name,
                           "positive" if yc.max() == 0 else "negative")
            temps.append(1.0)
            continue
        temps.append(_fit_one(lambda b, zc=z[:, c], yc=yc: _nll_sigmoid(b, zc, yc), (lo, hi), repr(name)))
    return temps


def apply_temperature(logits, temperature, mode: str = "softmax") -> np.ndarray:
    """Probabilities of ``logits / T`` (softmax over classes, or a sigmoid per finding with its own T)."""
    mode = _mode(mode)
    z = as_scores(logits, "logits")
    t = np.asarray(temperature, dtype=np.float64).reshape(-1)
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise ValueError(f"temperatures must be positive finite numbers, got {temperature!r}.")
    if mode == "softmax":
        if t.size != 1:
            raise ValueError(f"a softmax model has one temperature, got {t.size}.")
        return _softmax(z / t[0])
    if t.size not in (1, z.shape[1]):
        raise ValueError(f"sigmoid logits have {z.shape[1]} findings but {t.size} temperatures were given.")
    return _sigmoid(z / t[None, :])


def probabilities_to_logits(probs, mode: str = "softmax", eps: float = 1e-7) -> np.ndarray:
    """Logits that give back ``probs``: ``log p`` (softmax, up to a constant per row) or ``log(p / (1 - p))``.

    Probabilities are clipped to ``[eps, 1 - eps]`` first, so a saturated 0 or 1 gives a large finite logit.
    """
    mode = _mode(mode)
    p = np.clip(as_scores(probs, "probabilities"), eps, 1.0 - eps)
    return np.log(p) if mode == "softmax" else np.log(p) - np.log1p(-p)


def _monai_inputs(probs, labels, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = as_scores(probs, "probabilities")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1] (apply softmax/sigmoid to logits first).")
    y = as_positives(labels, p.shape[1], n=p.shape[0])
    if mode == "softmax":
        conf = p.max(1)
        correct = y[np.arange(p.shape[0]), p.argmax(1)]
        p, y = conf[:, None], correct[:, None]
    # MONAI wants (batch, channel, spatial...): one batch item, a channel per finding, the images as space
    return (torch.as_tensor(np.ascontiguousarray(p.T[None]), dtype=torch.float32),
            torch.as_tensor(np.ascontiguousarray(y.T[None]), dtype=torch.float32))


def expected_calibration_error(probs, labels, mode: str = "softmax", num_bins: int = 15,
                               class_names: Sequence[str] | None = None) -> dict:
    """ECE with MONAI's ``CalibrationErrorMetric`` (see the module docstring).

    Returns:
        ``{"ece": float, "num_bins": int}`` plus, for sigmoid, ``"per_class": {name: ece}`` (``ece`` is their
        mean over findings with at least one image).
    """
    from monai.metrics import CalibrationErrorMetric

    mode = _mode(mode)
    yp, y = _monai_inputs(probs, labels, mode)
    metric = CalibrationErrorMetric(num_bins=num_bins, include_background=True, calibration_reduction="expected",
                                    metric_reduction="none")
    # the whole set of predictions is here (rank 0 writes the report alone): computed directly, not through the
    # metric's buffers, whose aggregate() gathers across ranks and would wait for ranks that never call it
    per = metric._compute_tensor(yp, y)[0].double().numpy()
    out = {"ece": float(np.nanmean(per)) if np.isfinite(per).any() else float("nan"), "num_bins": int(num_bins)}
    if mode == "sigmoid":
        names = class_names_for(class_names, per.size)
        out["per_class"] = {n: float(v) for n, v in zip(names, per)}
    return out


def reliability_bins(probs, labels, mode: str = "softmax", num_bins: int = 15) -> dict:
    """Per-bin mean confidence, observed frequency and count (MONAI's ``calibration_binning``), pooled over
    findings for sigmoid; empty bins are ``nan``. Input of :func:`medplugin.visualize.reliability.plot_reliability`."""
    from monai.metrics.calibration import calibration_binning

    mode = _mode(mode)
    yp, y = _monai_inputs(probs, labels, mode)
    yp, y = yp.reshape(1, 1, -1), y.reshape(1, 1, -1)  # pool the findings
    mean_p, mean_y, counts = calibration_binning(yp, y, num_bins=num_bins)
    return {"confidence": mean_p[0, 0].double().numpy(), "frequency": mean_y[0, 0].double().numpy(),
            "count": counts[0, 0].double().numpy(), "edges": np.linspace(0.0, 1.0, num_bins + 1)}


def calibration_report(logits, labels, temperature, mode: str = "softmax", num_bins: int = 15,
                       class_names: Sequence[str] | None = None) -> dict:
    """ECE and NLL before and after temperature scaling, for ``metrics.json``.

    Returns:
        ``{"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "num_bins"}`` (sigmoid: NLLs are
        means over findings; ``per_class`` holds each finding's ECE before/after).
    """
    mode = _mode(mode)
    z = as_scores(logits, "logits")
    before = apply_temperature(z, 1.0, mode)
    after = apply_temperature(z, temperature, mode)
    e0 = expected_calibration_error(before, labels, mode, num_bins, class_names)
    e1 = expected_calibration_error(after, labels, mode, num_bins, class_names)
    n0 = negative_log_likelihood(z, labels, mode, 1.0)
    n1 = negative_log_likelihood(z, labels, mode, temperature)
    out = {"temperature": temperature, "ece_before": e0["ece"], "ece_after": e1["ece"],
           "nll_before": float(np.mean(n0)), "nll_after": float(np.mean(n1)), "num_bins": int(num_bins)}
    if mode == "sigmoid":
        out["per_class"] = {n: {"ece_before": e0["per_class"][n], "ece_after": e1["per_class"][n]}
                            for n in e0["per_class"]}
    return out
