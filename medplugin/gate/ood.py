"""Out-of-distribution score on a classifier's pooled features: the Mahalanobis distance to the training features.

Lee, Lee, Lee and Shin 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks" (NeurIPS): class-conditional Gaussians with one covariance shared by the classes (tied),
fitted on the training features; the score of an input is its smallest squared Mahalanobis distance to a class
mean. We use the penultimate (pooled) features only, without the paper's input pre-processing or feature
ensemble, and shrink the covariance (Ledoit and Wolf 2004, "A well-conditioned estimator for large-dimensional
covariance matrices") because a few hundred training images cannot fill a 1024- or 2048-dimensional covariance.
Features are L2-normalised before the fit and the scoring (Mueller and Hein 2025, "Mahalanobis++: Improving OOD
Detection via Feature Normalization", ICML): the norm of pooled features varies with how much lesion an image holds
and breaks the Gaussian model (on the chest demo, 4 of 47 held-out films, all with two findings, scored above the
threshold on raw features; 2 normalised).
For multi-label models (an image has several findings) the means follow an additive model, ``mu(y) = mu_0 +
sum_k y_k delta_k`` fitted by least squares (global average pooling adds the features of lesions in different
places), with one mean for each set of findings seen in training: a film with two findings is compared with the
mean of its pair, which borrows from the single findings when the pair is rare. Models without labels get one
pooled Gaussian.

The threshold is the ``percentile`` (99 by default) of the validation images' scores, taken as the finite-sample
(conformal) quantile, so about 1% of in-distribution images are flagged by construction. With fewer than 99
validation images that quantile does not exist (the largest of 34 scores is about their 97th percentile): the
threshold is then the percentile of a log-normal fitted to the scores, or the largest score if that is higher;
below 19 images none is set (:meth:`calibrate`).

Storage: the statistics are a mean per class (``K x F``) and a precision matrix (``F x F``): 4 MiB in float32 for
DenseNet-121's 1024 features, 16 MiB for ResNet-50's 2048 (tens of MB as JSON text), so they go into
``ood.npz`` beside ``model.pt`` (NumPy, read with ``allow_pickle=False``) and ``model.json`` gets this block::

    "ood": {"method": "mahalanobis", "reference": "Lee et al. 2018, NeurIPS", "file": "ood.npz",
            "sha256": "<of ood.npz>", "feature_layer": "fc", "feature_dim": 2048,
            "class_conditional": true, "classes": ["CNV", ...] | null, "shrinkage": 0.031, "n_train": 960,
            "feature_normalization": "l2",
            "threshold": 812.4, "percentile": 99.0, "n_val": 240}
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medplugin.errors import BadInputError
from medplugin.utils import atomic_write

__all__ = ["MahalanobisOOD"]

logger = logging.getLogger(__name__)

REFERENCE = "Lee et al. 2018, NeurIPS"
NORMALIZATION_REFERENCE = "Mueller and Hein 2025, Mahalanobis++, ICML"
NO_CLASS = "none"
"""The name of the empty set of findings among a multi-label model's means."""


class MahalanobisOOD:
    """Mahalanobis-distance out-of-distribution detector (Lee et al. 2018) with a shrunk, tied covariance.

    Args:
        means: ``(K, F)`` class means (``K = 1`` when pooled).
        precision: ``(F, F)`` inverse of the shared covariance.
        classes: the class names of the means (multi-label: each set of findings, names joined by ``|``, or
            :data:`NO_CLASS`; ``None`` when pooled).
        shrinkage: the covariance shrinkage used (recorded).
        n_train: the number of training features (recorded).
        feature_layer: the layer the features came from (recorded, e.g. ``"fc"``).
        threshold: scores above it are out of distribution (``None`` until :meth:`calibrate`).
        percentile: the validation percentile the threshold is.
        n_val: the number of validation features it was set on.
        threshold_note: why there is no threshold, or how it was set with few validation images.
        normalize: L2-normalise features before scoring (statistics fitted so; ``False`` for statistics written
            before medplugin normalised them, whose ``model.json`` block has no ``feature_normalization``).
    """

    MIN_VAL = 19
    """Fewest validation images a threshold is set on (see :meth:`calibrate`)."""

    def __init__(self, means: np.ndarray, precision: np.ndarray, classes: Sequence[str] | None = None,
                 shrinkage: float | None = None, n_train: int | None = None, feature_layer: str | None = None,
                 threshold: float | None = None, percentile: float | None = None, n_val: int | None = None,
                 threshold_note: str | None = None, normalize: bool = True) -> None:
        self.means = np.atleast_2d(np.asarray(means, dtype=np.float64))
        self.precision = np.asarray(precision, dtype=np.float64)
        f = self.means.shape[1]
        if self.precision.shape != (f, f):
            raise ValueError(f"precision must be ({f}, {f}) for {f} features, got {self.precision.shape}.")
        self.classes = list(classes) if classes is not None else None
        if self.classes is not None and len(self.classes) != len(self.means):
            raise ValueError(f"{len(self.classes)} class names for {len(self.means)} means.")
        self.shrinkage, self.n_train, self.feature_layer = shrinkage, n_train, feature_layer
        self.threshold, self.percentile, self.n_val = threshold, percentile, n_val
        self.threshold_note = threshold_note
        self.normalize = bool(normalize)
        self._projected = self.means @ self.precision  # (K, F): the score is x'Px - 2 x'P mu_k + mu_k'P mu_k
        self._offsets = (self._projected * self.means).sum(axis=1)

    @property
    def feature_dim(self) -> int:
        """F, the feature size."""
        return int(self.means.shape[1])

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray | None = None, classes: Sequence[str] | None = None,
            shrinkage: float | str = "ledoit-wolf", feature_layer: str | None = None) -> MahalanobisOOD:
        """Fit the class means and the shared, shrunk covariance on training features.

        Args:
            features: ``(N, F)`` pooled features of the training images.
            labels: ``(N,)`` class indices (class-conditional means); ``(N, K)`` multi-hot labels (multi-label:
                additive means, one for each set of findings seen); ``None``: one pooled mean.
            classes: names of the class indices or of the multi-hot columns.
            shrinkage: ``"ledoit-wolf"`` (estimated) or a fixed value in [0, 1]: ``(1 - a) S + a tr(S)/F I``.
            feature_layer: recorded with the statistics.

        Raises:
            ValueError: fewer than 2 features, labels of another length, a class without samples, a bad shrinkage.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"features must be (N >= 2, F), got shape {x.shape}.")
        if not np.isfinite(x).all():
            raise ValueError("features hold NaN or infinite values.")
        x = _l2_normalized(x)
        y = None if labels is None else np.asarray(labels)
        if y is not None and y.ndim == 1:
            if len(y) != len(x):
                raise ValueError(f"{len(y)} labels for {len(x)} features.")
            present = np.unique(y.astype(np.int64))
            n_cls = len(classes) if classes is not None else int(present.max()) + 1
            missing = sorted(set(range(n_cls)) - set(present.tolist()))
            if missing:
                names = [classes[i] if classes is not None else i for i in missing]
                raise ValueError(f"classes {names} have no training features: cannot fit their means.")
            means = np.stack([x[y == k].mean(axis=0) for k in range(n_cls)])
            centred = x - means[y.astype(np.int64)]
            names = list(classes) if classes is not None else [str(k) for k in range(n_cls)]
        elif y is not None and y.ndim == 2:
            if len(y) != len(x) or not np.isin(y, (0, 1)).all():
                raise ValueError(f"multi-hot labels must be (N={len(x)}, K) of 0 and 1, got shape {y.shape}.")
            if classes is not None and len(classes) != y.shape[1]:
                raise ValueError(f"{len(classes)} class names for {y.shape[1]} label columns.")
            design = np.hstack([np.ones((len(y), 1)), y.astype(np.float64)])
            effects = np.linalg.lstsq(design, x, rcond=None)[0]  # (1 + K, F): mu_0, then delta_k
            centred = x - design @ effects
            seen = np.unique(y.astype(np.int64), axis=0)
            means = np.hstack([np.ones((len(seen), 1)), seen]) @ effects
            col = list(classes) if classes is not None else [str(k) for k in range(y.shape[1])]
            names = ["|".join(col[k] for k in np.flatnonzero(s)) or NO_CLASS for s in seen]
        else:
            means = x.mean(axis=0, keepdims=True)
            centred = x - means
            names = None
        cov, alpha = _shrunk_covariance(centred, shrinkage)
        precision = np.linalg.inv(cov)
        logger.info("Mahalanobis OOD statistics: %d features of size %d, %s, shrinkage %.4f", len(x), x.shape[1],
                    "class-conditional" if names else "pooled", alpha)
        return cls(means, precision, classes=names, shrinkage=alpha, n_train=len(x), feature_layer=feature_layer)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` smallest squared Mahalanobis distance of each feature vector to a class mean."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.feature_dim:
            raise ValueError(f"features have size {x.shape[1]}, the statistics {self.feature_dim}.")
        if self.normalize:
            x = _l2_normalized(x)
        quad = ((x @ self.precision) * x).sum(axis=1)
        best = (quad[:, None] - 2.0 * x @ self._projected.T + self._offsets[None, :]).min(axis=1)
        return np.maximum(best, 0.0)  # a distance: rounding of the expanded form can go a hair below 0

    def calibrate(self, features: np.ndarray, percentile: float = 99.0) -> float | None:
        """Set the threshold from the validation features' scores and return it (``None``: too few of them).

        The threshold is the ``k``-th smallest of the ``n`` validation scores with ``k = ceil((n + 1) p / 100)``,
        the finite-sample ("split conformal") quantile: a new in-distribution input exceeds it with probability
        at most ``1 - p / 100`` (Vovk, Gammerman and Shafer 2005, "Algorithmic Learning in a Random World";
        Angelopoulos and Bates 2021, "A Gentle Introduction to Conformal Prediction", section 1). That needs
        ``n >= p / (100 - p)`` images (99 for the 99th percentile). With fewer, the largest score would be
        exceeded by ``1 / (n + 1)`` of in-distribution inputs (2.9% with 34 images, three times the 1% asked
        for), so the percentile is extrapolated instead: the threshold is the ``p``-th percentile of a log-normal
        fitted to the scores (mean and standard deviation of their logarithms), or the largest score when that is
        higher; :attr:`threshold_note` says so. (On Gaussian features, 34 validation images: 0.9% of held-out
        inputs exceed it, against 2.7% for the largest score; tests/gate/test_ood.py.) Below :attr:`MIN_VAL`
        validation images (``1 / (n + 1)`` above 5%, and too few to fit a tail) no threshold is set: the scores
        are still computed and reported, nothing is flagged by them, and :attr:`threshold_note` says why.
        """
        if not 0.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}.")
        scores = np.sort(self.score(features))
        n = len(scores)
        self.percentile, self.n_val = float(percentile), int(n)
        if n < self.MIN_VAL:
            self.threshold = None
            self.threshold_note = (f"no threshold: {n} validation image(s), at least {self.MIN_VAL} needed (with n "
                                   f"images one in n + 1 in-distribution inputs would be flagged)")
            logger.warning("OOD statistics: %s; the gate reports scores without flagging them", self.threshold_note)
            return None
        q = float(percentile) / 100.0
        rank = int(np.ceil((n + 1) * q - 1e-9))
        self.threshold = float(scores[min(rank, n) - 1])
        self.threshold_note = None
        if rank > n and q < 1.0:
            needed = int(np.ceil(q / (1 - q) - 1e-9))
            tail = _lognormal_quantile(scores, q)
            self.threshold = max(self.threshold, tail) if tail is not None else self.threshold
            fitted = "a log-normal fitted to their scores" if tail is not None else "no fit (a score is not positive)"
            self.threshold_note = (f"{n} validation images, fewer than the {needed} the {float(percentile):g}th "
                                   f"percentile needs: the threshold is that percentile of {fitted} "
                                   f"({tail if tail is not None else float('nan'):.1f}) or the largest score "
                                   f"({float(scores[-1]):.1f}), whichever is higher")
        return self.threshold

    def in_distribution(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: the score is at most the threshold."""
        if self.threshold is None:
            raise RuntimeError("no threshold yet: call calibrate() on validation features first.")
        return self.score(features) <= self.threshold

    def save(self, folder: str | os.PathLike, filename: str = "ood.npz") -> dict[str, Any]:
        """Write the arrays to ``folder/filename`` and return the JSON block for ``model.json`` (``"ood"``)."""
        path = Path(folder) / filename

        def _write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, means=self.means.astype(np.float32), precision=self.precision.astype(np.float32))

        atomic_write(path, _write)
        return {
            "method": "mahalanobis", "reference": REFERENCE, "file": filename, "sha256": _sha256(path),
            "feature_layer": self.feature_layer, "feature_dim": self.feature_dim,
            "class_conditional": self.classes is not None, "classes": self.classes,
            "shrinkage": self.shrinkage, "n_train": self.n_train,
            "feature_normalization": "l2" if self.normalize else None,
            **({"normalization_reference": NORMALIZATION_REFERENCE} if self.normalize else {}),
            "threshold": self.threshold, "percentile": self.percentile, "n_val": self.n_val,
            **({"threshold_note": self.threshold_note} if self.threshold_note else {}),
        }

    @classmethod
    def load(cls, block: Mapping[str, Any], folder: str | os.PathLike) -> MahalanobisOOD:
        """Read what :meth:`save` wrote: ``block`` is ``model.json``'s ``"ood"``, ``folder`` holds its file.

        Raises:
            BadInputError: the file is missing, changed since (checksum) or holds other arrays.
            ValueError: ``block`` is not a Mahalanobis block.
        """
        if block.get("method") != "mahalanobis" or "file" not in block:
            raise ValueError(f"model.json 'ood' is not a Mahalanobis block: {dict(block)!r}.")
        path = Path(folder) / block["file"]
        if not path.is_file():
            raise BadInputError(path, "the OOD statistics named in model.json are missing (copy them with model.pt)")
        if block.get("sha256") and _sha256(path) != block["sha256"]:
            raise BadInputError(path, "the OOD statistics do not match model.json (checksum differs): a file from "
                                "another training run?")
        with np.load(path, allow_pickle=False) as data:
            if set(data.files) != {"means", "precision"}:
                raise BadInputError(path, f"expected arrays 'means' and 'precision', found {sorted(data.files)}")
            means, precision = data["means"], data["precision"]
        return cls(means, precision, classes=block.get("classes"), shrinkage=block.get("shrinkage"),
                   n_train=block.get("n_train"), feature_layer=block.get("feature_layer"),
                   threshold=block.get("threshold"), percentile=block.get("percentile"), n_val=block.get("n_val"),
                   threshold_note=block.get("threshold_note"),
                   normalize=block.get("feature_normalization") == "l2")


def _shrunk_covariance(centred: np.ndarray, shrinkage: float | str) -> tuple[np.ndarray, float]:
    n, f = centred.shape
    if shrinkage == "ledoit-wolf":
        from sklearn.covariance import ledoit_wolf

        cov, alpha = ledoit_wolf(centred, assume_centered=True)
        cov, alpha = np.asarray(cov, dtype=np.float64), float(alpha)
    else:
        alpha = float(shrinkage)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"shrinkage must be 'ledoit-wolf' or in [0, 1], got {shrinkage!r}.")
        emp = centred.T @ centred / n
        cov = (1.0 - alpha) * emp + alpha * np.trace(emp) / f * np.eye(f)
    if alpha == 0.0 and np.linalg.matrix_rank(cov) < f:  # no shrinkage, a singular covariance: keep it invertible
        cov = cov + 1e-6 * max(np.trace(cov) / f, 1e-12) * np.eye(f)
    return cov, alpha


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _l2_normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _lognormal_quantile(scores: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile of a log-normal fitted to ``scores`` (moments of their logarithms); ``None`` when a score
    is not positive or they do not vary."""
    from statistics import NormalDist

    s = np.asarray(scores, dtype=np.float64)
    if len(s) < 2 or not (s > 0).all():
        return None
    logs = np.log(s)
    sd = float(logs.std(ddof=1))
    if not np.isfinite(sd) or sd == 0.0:
        return None
    return float(np.exp(logs.mean() + NormalDist().inv_cdf(q) * sd))
