"""Input checks shared by the statistics modules: scores as ``(N, C)``, labels as ``(N, C)`` booleans."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["as_scores", "as_positives", "class_names_for", "as_patient_index"]


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x)


def as_scores(scores, name: str = "scores") -> np.ndarray:
    """``scores`` as a finite ``(N, C)`` float64 array (a 1-D array is one column)."""
    s = _numpy(scores).astype(np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2:
        raise ValueError(f"{name} must be (N,) or (N, C), got shape {s.shape}.")
    if not np.isfinite(s).all():
        rows = np.flatnonzero(~np.isfinite(s).all(1))[:5].tolist()
        raise ValueError(f"{name} hold NaN or infinite values (at rows {rows}).")
    return s


def as_positives(labels, n_classes: int, n: int | None = None) -> np.ndarray:
    """Labels as an ``(N, n_classes)`` boolean matrix of positives.

    ``(N,)`` labels are class indices when ``n_classes > 1`` (multi-class: one-vs-rest positives) and 0/1 when
    ``n_classes == 1`` (binary); ``(N, n_classes)`` labels are 0/1 per class (multi-label or one-hot).
    """
    y = _numpy(labels)
    if y.ndim == 2 and y.shape[1] == 1 and n_classes == 1:
        y = y[:, 0]
    if y.ndim == 1:
        if n_classes == 1:
            if y.size and not np.isin(y, (0, 1)).all():
                raise ValueError(f"binary labels must be 0 or 1, got values {sorted(set(np.unique(y).tolist()))[:6]}.")
            out = y.astype(bool)[:, None]
        else:
            if y.size and (not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= n_classes):
                raise ValueError(f"class-index labels must be integers in [0, {n_classes - 1}], "
                                 f"got values {sorted(set(np.unique(y).tolist()))[:6]}.")
            out = np.eye(n_classes, dtype=bool)[y.astype(np.int64)]
    elif y.ndim == 2:
        if y.shape[1] != n_classes:
            raise ValueError(f"labels have {y.shape[1]} columns but there are {n_classes} classes.")
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError(f"(N, C) labels must be 0 or 1, got values {sorted(set(np.unique(y).tolist()))[:6]}.")
        out = y.astype(bool)
    else:
        raise ValueError(f"labels must be (N,) or (N, C), got shape {y.shape}.")
    if n is not None and out.shape[0] != n:
        raise ValueError(f"{n} score rows but {out.shape[0]} labels.")
    return out


def class_names_for(class_names: Sequence[str] | None, n_classes: int) -> list[str]:
    """The class names, checked against the number of score columns (default ``class_0``, ...)."""
    if class_names is None:
        return [f"class_{c}" for c in range(n_classes)]
    names = [str(c) for c in class_names]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names {names} for {n_classes} score columns.")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}.")
    return names


def as_patient_index(patient_ids, n: int | None = None) -> tuple[np.ndarray, int]:
    """``(group index per image, number of patients)``; ``None`` makes every image its own patient."""
    if patient_ids is None:
        if n is None:
            raise ValueError("patient_ids=None needs the number of images.")
        return np.arange(n), n
    ids = list(patient_ids)
    if n is not None and len(ids) != n:
        raise ValueError(f"{len(ids)} patient ids for {n} images.")
    bad = [i for i, p in enumerate(ids) if p is None or (isinstance(p, float) and np.isnan(p)) or str(p) == ""]
    if bad:
        raise ValueError(f"patient ids are missing at rows {bad[:5]} (every image needs its patient).")
    _, index = np.unique(np.asarray([str(p) for p in ids]), return_inverse=True)
    return index.astype(np.int64), int(index.max()) + 1 if index.size else 0
