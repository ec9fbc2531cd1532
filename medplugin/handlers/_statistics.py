"""The statistics every evaluation report writer adds (issue 15), in one place.

:class:`EvaluationStatistics` is owned by a report writer (classification, grading, multi-label). Per test image it
keeps the raw logits (for the reliability diagram) and the patient id (the bootstrap's resampling unit); at the
end it gives the operating-point figures at the model's stored thresholds, the patient-level 95% intervals of
every headline figure, the calibration before/after temperature scaling, and writes ``reliability.png``,
``metrics.md``/``metrics.csv`` (every figure as "0.912 (0.884-0.936)") and ``predictions.csv`` (the per-image
file ``medplugin compare`` reads). Every part is off unless configured, so a writer built with its old arguments
writes what it always wrote.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medplugin.metrics.bootstrap import bootstrap_intervals, ci_key, format_ci, headline_figures
from medplugin.metrics.operating_points import apply_operating_points, operating_point_metrics
from medplugin.metrics.stored import stored_operating_points, stored_temperature
from medplugin.utils import atomic_write

__all__ = ["EvaluationStatistics"]

logger = logging.getLogger(__name__)

RATES = ("sensitivity", "specificity", "ppv", "npv")


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class EvaluationStatistics:
    """Operating points, intervals, calibration and per-image predictions of one evaluation run.

    Args:
        class_names: class names in output order.
        mode: ``softmax`` (one label per image) or ``sigmoid`` (multi-label).
        model_json: the evaluated model's ``model.json``: its stored operating points are applied and reported,
            and its temperature draws ``reliability.png`` (ECE before/after). ``None``: neither.
        threshold: a fixed threshold (one, or one per class) instead of the stored points.
        bootstrap: patient-level bootstrap resamples for the 95% intervals (0: no intervals).
        seed: the bootstrap's seed.
        predictions: file name of the per-image predictions (``None``: not written).
        logits_key: output key of the logits before temperature scaling (the bundles copy them there before
            their ``Temperatured`` step); without it the probabilities are taken as the uncalibrated ones.
        patient_key: batch key of the patient id (missing ids: images are resampled one by one, logged).
        num_bins: bins of the expected calibration error.
    """

    def __init__(self, class_names: Sequence[str], mode: str = "softmax", model_json: str | os.PathLike | None = None,
                 threshold: float | Sequence[float] | None = None, bootstrap: int = 0, seed: int = 0,
                 predictions: str | None = None, logits_key: str | None = "logits", patient_key: str = "patient_id",
                 num_bins: int = 15) -> None:
        if not isinstance(bootstrap, (int, np.integer)) or isinstance(bootstrap, bool) or bootstrap < 0:
            raise ValueError(f"bootstrap must be a number of resamples >= 0 (0: no intervals), got {bootstrap!r}.")
        self.class_names = [str(c) for c in class_names]
        self.mode = mode
        self.model_json = None if model_json is None else str(model_json)
        self.threshold = threshold
        self.bootstrap, self.seed = int(bootstrap), int(seed)
        self.predictions = predictions
        self.logits_key, self.patient_key = logits_key, patient_key
        self.num_bins = int(num_bins)

    @property
    def enabled(self) -> bool:
        return bool(self.model_json or self.threshold is not None or self.bootstrap or self.predictions)

    def record(self, batch_item: Mapping, output_item: Mapping) -> tuple[np.ndarray | None, str | None]:
        """(raw logits or ``None``, patient id or ``None``) of one sample."""
        logits = None
        if self.logits_key and self.logits_key in output_item:
            logits = torch.as_tensor(output_item[self.logits_key]).detach().float().cpu().numpy().reshape(-1)
        pid = batch_item.get(self.patient_key) if isinstance(batch_item, Mapping) else None
        if isinstance(pid, (list, tuple)):
            pid = pid[0] if pid else None
        if isinstance(pid, torch.Tensor):
            pid = pid.reshape(-1)[0].item()
        return logits, (None if pid is None or str(pid) == "" else str(pid))

    def points(self) -> dict[str, dict] | None:
        """The operating points applied (stored, or the fixed ``threshold``); ``None`` when neither is set."""
        if self.model_json is None and self.threshold is None:
            return None
        return stored_operating_points(self.model_json, self.class_names, self.threshold)

    def calls(self, probs: np.ndarray, points: Mapping | None = None) -> np.ndarray | None:
        """``(N, C)`` 0/1 calls at the operating points (``None`` without points)."""
        points = self.points() if points is None else points
        return None if points is None else apply_operating_points(probs, points, self.class_names)

    def compute(self, probs: np.ndarray, labels: np.ndarray, patient_ids: Sequence[str | None], kind: str,
                kappa: str | None = None, extra_figures: Mapping | None = None,
                extra_points: Mapping[str, tuple] | None = None) -> dict:
        """Operating-point figures and intervals.

        Args:
            probs: ``(N, C)`` probabilities (temperature-scaled when the model has a temperature).
            labels: ``(N,)`` class indices or ``(N, C)`` 0/1.
            patient_ids: one per image (``None`` entries: the bootstrap resamples images).
            kind: ``multiclass`` or ``multilabel``.
            kappa: add Cohen's kappa of the argmax (``quadratic``) to the figures.
            extra_figures: more bootstrap figures (``{name: figure}``, e.g. a referable-DR AUROC).
            extra_points: more operating points, ``{name: (scores (N,), positives (N,), point)}``.

        Returns:
            ``{"figures": {K: value}, "intervals": {K: [low, high]}, "operating_points": {name: {...}},
            "bootstrap": {...}}`` (``intervals`` and ``bootstrap`` only with ``bootstrap > 0``).
        """
        points = self.points()
        calls = self.calls(probs, points)
        out: dict = {"figures": {}, "intervals": {}, "operating_points": {}}
        if points is not None:
            for name, m in operating_point_metrics(probs, labels, points, self.class_names).items():
                out["operating_points"][name] = {"criterion": points[name].get("criterion"), **m}
        extra_rates = {}
        for name, (scores, positives, point) in (extra_points or {}).items():
            k = np.asarray(scores)[:, None] >= float(point["threshold"])
            m = operating_point_metrics(np.asarray(scores)[:, None], np.asarray(positives).astype(int)[:, None],
                                        {name: point}, [name])[name]
            out["operating_points"][name] = {"criterion": point.get("criterion"), **m}
            from medplugin.metrics.bootstrap import rate_figures

            extra_rates.update(rate_figures(k[:, 0], np.asarray(positives).astype(bool), name))
        if not self.bootstrap:
            return out
        figs = headline_figures(probs, labels, self.class_names, kind, calls, kappa)
        figs.update(extra_figures or {})
        figs.update(extra_rates)
        ids = None if any(p is None for p in patient_ids) else list(patient_ids)
        if ids is None:
            logger.warning("%d of %d test images have no %s: the bootstrap resamples images, not patients "
                           "(intervals may be too narrow)", sum(p is None for p in patient_ids), len(patient_ids),
                           self.patient_key)
        res = bootstrap_intervals(figs, ids, probs.shape[0], self.bootstrap, self.seed)
        key = ci_key()
        out["figures"] = {k: r["value"] for k, r in res.items()}
        out["intervals"] = {k: list(r[key]) for k, r in res.items()}
        for name, m in out["operating_points"].items():
            for rate in RATES:
                if f"{name}_{rate}" in out["intervals"]:
                    m[f"{rate}_{key}"] = out["intervals"][f"{name}_{rate}"]
        out["bootstrap"] = {
            "n_resamples": self.bootstrap, "seed": self.seed, "level": 0.95, "interval": key,
            "resampling_unit": "patient" if ids is not None else "image",
            "n_patients": len(set(ids)) if ids is not None else probs.shape[0],
            "undefined": {k: self.bootstrap - r["n_valid"] for k, r in res.items()
                          if math.isfinite(r["value"]) and r["n_valid"] < self.bootstrap}}
        return out

    def calibration(self, probs: np.ndarray, labels: np.ndarray, logits: Sequence[np.ndarray | None],
                    output_dir: Path) -> dict | None:
        """ECE before/after temperature scaling and ``reliability.png`` (with ``model_json``; else ``None``)."""
        from medplugin.metrics.calibration import probabilities_to_logits
        from medplugin.metrics.statistics import write_reliability

        if self.model_json is None or probs.shape[0] == 0:
            return None
        t = stored_temperature(self.model_json)
        if all(v is not None for v in logits):
            z = np.stack(logits)
        else:  # no raw logits kept: the probabilities are the network's own
            z = probabilities_to_logits(probs, self.mode)
        cal = write_reliability(z, labels, t, self.mode, output_dir / "reliability.png", self.class_names,
                                self.num_bins)
        return {"temperature": t, **cal}

    def add_to_report(self, report: dict, stats: Mapping, probs: np.ndarray, labels: np.ndarray,
                      logits: Sequence[np.ndarray | None], output_dir: Path) -> None:
        """Put what every report writer records into ``report``: the operating points and bootstrap summary of
        ``stats`` (from :meth:`compute`) and the calibration (:meth:`calibration`, which writes reliability.png)."""
        if stats["operating_points"]:
            report["operating_points"] = stats["operating_points"]
        if "bootstrap" in stats:
            report["bootstrap"] = stats["bootstrap"]
        cal = self.calibration(probs, labels, logits, output_dir)
        if cal is not None:
            report["calibration"] = cal

    def write_predictions(self, output_dir: Path, files: Sequence[str], patient_ids: Sequence[str | None],
                          prediction_column: str, predictions: Sequence[str], probs: np.ndarray, truth: np.ndarray,
                          calls: np.ndarray | None) -> None:
        """``predictions.csv`` in :func:`medplugin.compare.prediction_header`'s columns (no ``patient_id`` column
        when an image has none; no ``call_`` columns without operating points)."""
        if not self.predictions:
            return
        from medplugin.compare import prediction_header

        header = prediction_header(self.class_names, calls is not None, prediction_column)
        with_ids = all(p is not None for p in patient_ids)
        if not with_ids:
            header.remove("patient_id")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for i, f in enumerate(files):
            row = [f, *([patient_ids[i]] if with_ids else []), predictions[i], *[f"{v:.6f}" for v in probs[i]],
                   *[str(int(v)) for v in truth[i]], *([str(int(v)) for v in calls[i]] if calls is not None else []),
                   ""]
            w.writerow(row)
        _write_text(output_dir / self.predictions, buf.getvalue())

    @staticmethod
    def write_tables(output_dir: Path, report: Mapping, rows: Sequence[tuple[str, float, Sequence | None]],
                     title: str) -> None:
        """``metrics.md`` and ``metrics.csv``: every figure as "0.912 (0.884-0.936)" and the operating points."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["figure", "value (95% CI)"])
        md = [title, "", "| figure | value (95% CI) |", "|---|---|"]
        for name, value, ci in rows:
            cell = format_ci(value, ci)
            w.writerow([name, cell])
            md.append(f"| {name} | {cell} |")
        points = report.get("operating_points") or {}
        if points:
            key = ci_key()
            head = ["class", "criterion", "threshold", *RATES]
            w.writerow([])
            w.writerow(head)
            md += ["", "Operating points chosen on validation (model.json), applied to these images:", "",
                   "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for name, m in points.items():
                cells = [name, str(m.get("criterion") or ""), f"{m['threshold']:.4g}",
                         *[format_ci(m.get(r), m.get(f"{r}_{key}")) for r in RATES]]
                w.writerow(cells)
                md.append("| " + " | ".join(cells) + " |")
        _write_text(output_dir / "metrics.csv", buf.getvalue())
        _write_text(output_dir / "metrics.md", "\n".join(md) + "\n")
