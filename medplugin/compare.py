"""``medplugin compare RUN_A RUN_B``: is run B really better than run A on the same test set?

Reads two evaluation run folders, refuses runs on different test sets, and compares every headline figure with
a paired patient-level bootstrap (difference B - A, its 95% interval, a two-sided p-value) and, for each AUROC,
DeLong's test (:mod:`medplugin.metrics.comparison`). Prints a table and writes JSON.

What an evaluation run folder must hold (the evaluation handlers write it):

``predictions.csv``, one row per test image (classification)
    ``file`` (the image path), ``patient_id``, ``prob_<class>`` per class (the probabilities scored),
    ``true_<class>`` per class (0/1; one-hot for a multi-class model), optionally ``call_<class>`` (0/1 at the
    stored operating points: adds sensitivity, specificity, PPV and NPV) and ``error`` (a row with an error is
    left out). Other columns (``prediction``, ``findings``) are ignored.
``predictions.csv`` (segmentation)
    ``file``, ``patient_id``, ``dice`` (per case). Without it, ``metrics.json``'s ``per_exam`` / ``per_image``
    rows (``file``, ``dice``) are used.
``metrics.json`` (optional)
    ``"kind": "multiclass" | "multilabel"`` (otherwise inferred: one-hot labels and rows of probabilities
    summing to 1 make a multi-class run); a ``kappa`` entry adds the quadratic kappa of the argmax.

Without ``patient_id`` the images are resampled one by one (logged; the JSON says ``"resampling_unit":
"image"``). Runs are matched by file; when their paths differ only by the folder holding the test set, by the
path below the folder common to each run's files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medplugin.errors import BadInputError
from medplugin.metrics.bootstrap import format_interval, headline_figures
from medplugin.metrics.comparison import delong_test, paired_bootstrap

__all__ = ["EvaluationRun", "prediction_header", "read_run", "align_runs", "compare_runs", "format_table"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationRun:
    """The per-image results of one evaluation run (see the module docstring for the files)."""

    path: Path
    files: list[str]
    patient_ids: list[str] | None
    class_names: list[str]
    probs: np.ndarray | None  # (N, C)
    truth: np.ndarray | None  # (N, C) 0/1
    calls: np.ndarray | None  # (N, C) 0/1
    dice: np.ndarray | None  # (N,)
    kind: str  # multiclass | multilabel | segmentation
    kappa: bool


def prediction_header(class_names: Sequence[str], calls: bool = True,
                      prediction_column: str = "prediction") -> list[str]:
    """The columns of a classification ``predictions.csv`` that :func:`read_run` reads, in the order to write.

    ``file, patient_id, <prediction_column>, prob_<c>..., true_<c>..., [call_<c>...], error``: ``true_<c>`` is
    0/1 (one-hot for a multi-class model), ``call_<c>`` the 0/1 call at the stored operating point.
    """
    names = list(class_names)
    cols = ["file", "patient_id", prediction_column, *[f"prob_{c}" for c in names], *[f"true_{c}" for c in names]]
    return [*cols, *([f"call_{c}" for c in names] if calls else []), "error"]


def _float(path: Path, row: int, col: str, value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise BadInputError(path, f"row {row}: column {col!r} is not a number ({value!r})") from None
    if not math.isfinite(v):
        raise BadInputError(path, f"row {row}: column {col!r} is not finite ({value!r})")
    return v


def _read_metrics(run: Path) -> dict:
    f = run / "metrics.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise BadInputError(f, f"not valid JSON ({e})") from None


def read_run(run_dir: str | os.PathLike) -> EvaluationRun:
    """Read an evaluation run folder (``predictions.csv`` and ``metrics.json``), with clear errors."""
    run = Path(run_dir)
    if not run.is_dir():
        raise BadInputError(run, "no such evaluation run folder")
    metrics = _read_metrics(run)
    pred = run / "predictions.csv"
    if not pred.is_file():
        rows = metrics.get("per_exam") or metrics.get("per_image")
        if not rows:
            raise BadInputError(run, "no predictions.csv (and no per-case Dice in metrics.json): evaluate the model "
                                     "with this version first")
        rows = [{k: str(v) for k, v in r.items()} for r in rows]
        header = list(rows[0])
        source = run / "metrics.json"
    else:
        with open(pred, newline="") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        source = pred
    if "file" not in header:
        raise BadInputError(source, f"no 'file' column (columns: {header})")
    rows = [r for r in rows if not (r.get("error") or "").strip()]
    if not rows:
        raise BadInputError(source, "no usable rows (every row is empty or carries an error)")
    files = [r["file"] for r in rows]
    dup = sorted(f for f, n in Counter(files).items() if n > 1)
    if dup:
        raise BadInputError(source, f"files listed twice: {dup[:3]}")
    patients = [r["patient_id"] for r in rows] if "patient_id" in header else None
    if patients is not None and any(not p for p in patients):
        raise BadInputError(source, f"empty patient_id at rows {[i + 2 for i, p in enumerate(patients) if not p][:5]}")
    classes = [h[len("prob_"):] for h in header if h.startswith("prob_")]
    if classes:
        missing = [f"true_{c}" for c in classes if f"true_{c}" not in header]
        if missing:
            raise BadInputError(source, f"no true-label columns {missing}: the evaluation must write true_<class> "
                                        "0/1 columns beside prob_<class>")
        probs = np.array([[_float(source, i + 2, f"prob_{c}", r[f"prob_{c}"]) for c in classes]
                          for i, r in enumerate(rows)])
        truth = np.array([[_float(source, i + 2, f"true_{c}", r[f"true_{c}"]) for c in classes]
                          for i, r in enumerate(rows)])
        if not np.isin(truth, (0, 1)).all():
            raise BadInputError(source, "true_<class> columns must hold 0 or 1")
        calls = None
        if all(f"call_{c}" in header for c in classes):
            calls = np.array([[_float(source, i + 2, f"call_{c}", r[f"call_{c}"]) for c in classes]
                              for i, r in enumerate(rows)])
            if not np.isin(calls, (0, 1)).all():
                raise BadInputError(source, "call_<class> columns must hold 0 or 1")
        kind = metrics.get("kind")
        if kind is None:
            one_hot = len(classes) > 1 and bool((truth.sum(1) == 1).all())
            kind = "multiclass" if one_hot and np.allclose(probs.sum(1), 1.0, atol=1e-3) else "multilabel"
        if kind not in ("multiclass", "multilabel"):
            raise BadInputError(run / "metrics.json", f"kind must be 'multiclass' or 'multilabel', got {kind!r}")
        return EvaluationRun(run, files, patients, classes, probs, truth.astype(np.int8),
                             None if calls is None else calls.astype(np.int8), None, kind,
                             kind == "multiclass" and "kappa" in metrics)
    if "dice" not in header:
        raise BadInputError(source, f"neither prob_<class> columns nor a dice column (columns: {header})")
    dice = np.array([_float(source, i + 2, "dice", r["dice"]) for i, r in enumerate(rows)])
    return EvaluationRun(run, files, patients, [], None, None, None, dice, "segmentation", False)


def _keys(files: list[str]) -> list[str]:
    """File paths below the folder common to all of them (so two copies of one test set match)."""
    if len(files) == 1:
        return [os.path.basename(files[0])]
    try:
        root = os.path.commonpath(files)
    except ValueError:  # mixed absolute and relative paths
        return files
    return [os.path.relpath(f, root) for f in files]


def _difference(a: set, b: set) -> str:
    only_a, only_b = sorted(a - b), sorted(b - a)
    return (f"{len(only_a)} files only in A (e.g. {only_a[:3]}), {len(only_b)} only in B (e.g. {only_b[:3]})")


def align_runs(a: EvaluationRun, b: EvaluationRun) -> np.ndarray:
    """Row order of B matching A's rows; refuses runs on different test sets (files, patients, labels, classes).

    Raises:
        BadInputError: naming run B and the difference.
    """
    if a.kind != b.kind:
        raise BadInputError(b.path, f"run B is a {b.kind} run but run A ({a.path}) a {a.kind} run")
    if a.class_names and sorted(a.class_names) != sorted(b.class_names):
        raise BadInputError(b.path, f"different classes: A has {a.class_names}, B has {b.class_names}")
    keys_a, keys_b = a.files, b.files
    if set(keys_a) != set(keys_b):
        keys_a, keys_b = _keys(a.files), _keys(b.files)
        if set(keys_a) != set(keys_b) or len(set(keys_a)) != len(keys_a):
            diff = _difference(set(a.files), set(b.files))
            raise BadInputError(b.path, f"not the test set of run A ({a.path}): {diff}")
        logger.info("the runs list the test images under different folders; matched by the path below them")
    where = {k: i for i, k in enumerate(keys_b)}
    order = np.array([where[k] for k in keys_a], dtype=np.int64)
    if (a.patient_ids is None) != (b.patient_ids is None):
        raise BadInputError(b.path if b.patient_ids is None else a.path,
                            "no patient_id column, but the other run has one")
    if a.patient_ids is not None:
        bad = [a.files[i] for i, j in enumerate(order) if a.patient_ids[i] != b.patient_ids[j]]
        if bad:
            raise BadInputError(b.path, f"not the test set of run A ({a.path}): {len(bad)} files belong to other "
                                        f"patients (e.g. {bad[:3]})")
    if a.truth is not None:
        cols = [b.class_names.index(c) for c in a.class_names]
        diff = np.flatnonzero((a.truth != b.truth[order][:, cols]).any(1))
        if diff.size:
            raise BadInputError(b.path, f"not the test set of run A ({a.path}): {diff.size} files have other labels "
                                        f"(e.g. {[a.files[i] for i in diff[:3]]})")
    return order


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Compare two evaluation runs on the same test set (see the module docstring).

    Returns:
        ``{"run_a", "run_b", "difference": "B - A", "kind", "n_images", "n_patients", "resampling_unit",
        "n_resamples", "seed", "figures": {name: {"a", "b", "difference", "ci95", "p", "n_valid"[, "delong_z",
        "delong_p"]}}}``, JSON-ready (undefined values are ``None``).
    """
    a, b = read_run(run_a), read_run(run_b)
    order = align_runs(a, b)
    if a.kind == "segmentation":
        fa, fb = headline_figures(dice=a.dice), headline_figures(dice=b.dice[order])
    else:
        cols = [b.class_names.index(c) for c in a.class_names]
        pb = b.probs[order][:, cols]
        both_calls = a.calls is not None and b.calls is not None
        if (a.calls is None) != (b.calls is None):
            logger.warning("only one run has call_<class> columns: sensitivity/specificity/PPV/NPV not compared")
        kappa = "quadratic" if a.kappa and b.kappa else None
        fa = headline_figures(a.probs, a.truth, a.class_names, a.kind, a.calls if both_calls else None, kappa)
        fb = headline_figures(pb, a.truth, a.class_names, a.kind, b.calls[order][:, cols] if both_calls else None,
                              kappa)
    if a.patient_ids is None:
        logger.warning("no patient_id column: resampling images, not patients (intervals may be too narrow)")
    res = paired_bootstrap(fa, fb, a.patient_ids, len(a.files), n_resamples, seed, level)
    if a.kind != "segmentation":
        for c, name in enumerate(a.class_names):
            key = f"{name}_auroc"
            pos = a.truth[:, c].astype(bool)
            if key in res and pos.sum() >= 2 and (~pos).sum() >= 2:
                d = delong_test(a.probs[:, c], pb[:, c], pos)
                res[key]["delong_z"], res[key]["delong_p"] = d["z"], d["p"]
    n_patients = len(set(a.patient_ids)) if a.patient_ids is not None else len(a.files)
    return _clean({"run_a": str(a.path), "run_b": str(b.path), "difference": "B - A", "kind": a.kind,
                   "n_images": len(a.files), "n_patients": n_patients,
                   "resampling_unit": "patient" if a.patient_ids is not None else "image",
                   "n_resamples": int(n_resamples), "seed": seed, "level": level, "figures": res})


def format_table(result: dict, digits: int = 3) -> str:
    """The comparison as a Markdown table: figure, A, B, B - A, its interval, p (bootstrap), p (DeLong)."""
    key = f"ci{round(result.get('level', 0.95) * 100):d}"
    head = ["figure", "A", "B", "B - A", f"{key[2:]}% CI", "p", "p (DeLong)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, d=digits):
        return "n/a" if v is None else f"{v:.{d}f}"

    for name, r in result["figures"].items():
        ci = r[key]
        lines.append("| " + " | ".join([name, f(r["a"]), f(r["b"]), f(r["difference"]),
                                        format_interval(ci, digits),
                                        f(r["p"], 4), f(r.get("delong_p"), 4) if "delong_p" in r else ""]) + " |")
    return "\n".join(lines)
