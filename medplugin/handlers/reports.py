"""Evaluation outputs: metrics.json with plots, per-file predictions (CAMs: :mod:`medplugin.handlers.cam`)."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from medplugin.handlers._engine import gather_samples, is_main_process, iter_samples
from medplugin.handlers._statistics import EvaluationStatistics
from medplugin.metrics.classification import classification_report
from medplugin.metrics.stored import stored_thresholds
from medplugin.utils import atomic_write, write_json
from medplugin.visualize.plots import plot_confusion_matrix, plot_roc

__all__ = ["ClassificationReportWriter", "PredictionWriter"]

logger = logging.getLogger(__name__)


def _cell(value) -> str:
    """A CSV cell: empty for ``None``, ``true``/``false`` for booleans, ``%.6g`` for other numbers."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def _probs(output_item: dict, key: str) -> np.ndarray:
    return torch.as_tensor(output_item[key]).detach().float().cpu().numpy().reshape(-1)


def _path_of(batch_item: dict) -> str:
    """The file of one sample: its ``path``, else its ``image_path``, else its image's ``filename_or_obj``."""
    for key in ("path", "image_path"):
        if isinstance(batch_item.get(key), str) and batch_item[key]:
            return batch_item[key]
    meta = getattr(batch_item.get("image"), "meta", None) or {}
    name = meta.get("filename_or_obj", "")
    return name if isinstance(name, str) else ""


class ClassificationReportWriter:
    """At the end of an evaluation, write ``metrics.json``, ``confusion_matrix.png`` and ``roc.png``.

    ``metrics.json`` holds accuracy, misclassification rate, macro one-vs-rest AUC, per-class sensitivity,
    specificity, precision and AUC, the confusion matrix, and the misclassified files. Under several processes
    the samples of every rank are gathered (in dataset order) and rank 0 writes.

    Issue 15's statistics (:class:`~medplugin.handlers._statistics.EvaluationStatistics`), each on when configured:
    with ``model_json``, ``operating_points`` (per class, one-vs-rest: sensitivity, specificity, PPV and NPV at the
    threshold chosen on validation; the prediction stays the argmax), ``calibration`` (ECE before/after the
    stored temperature) and ``reliability.png``; with ``bootstrap`` N > 0, a patient-level 95% interval
    ``K_ci95`` beside each headline figure (``accuracy``, ``macro_auc``, each class's ``auc``, the operating-point
    rates) and ``metrics.md``/``metrics.csv``; with ``predictions``, the per-image file ``medplugin compare``
    reads.

    Args:
        output_dir: destination folder.
        class_names: class names in output order.
        pred_key: output key of the class probabilities.
        label_key: batch key of the true class index.
        model_json: the evaluated model's ``model.json`` (operating points and temperature).
        threshold: a fixed one-vs-rest threshold (one, or one per class) instead of the stored points.
        bootstrap: patient-level bootstrap resamples (0: no intervals).
        seed: the bootstrap's seed.
        predictions: file name of the per-image predictions (``None``: not written).
        logits_key: output key of the logits before temperature scaling (for the reliability diagram).
        patient_key: batch key of the patient id.
    """

    kind = "multiclass"

    def __init__(self, output_dir: str, class_names: Sequence[str], pred_key: str = "pred",
                 label_key: str = "label", model_json: str | None = None,
                 threshold: float | Sequence[float] | None = None, bootstrap: int = 0, seed: int = 0,
                 predictions: str | None = None, logits_key: str | None = "logits",
                 patient_key: str = "patient_id") -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.pred_key, self.label_key = pred_key, label_key
        self.statistics = EvaluationStatistics(self.class_names, "softmax", model_json, threshold, bootstrap, seed,
                                               predictions, logits_key, patient_key)
        self._reset()

    def _reset(self, engine: Engine | None = None) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[int] = []
        self._paths: list[str] = []
        self._logits: list = []
        self._patients: list = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            self._probs.append(_probs(o, self.pred_key))
            self._labels.append(int(torch.as_tensor(b[self.label_key]).reshape(-1)[0]))
            self._paths.append(_path_of(b))
            logits, pid = self.statistics.record(b, o)
            self._logits.append(logits)
            self._patients.append(pid)

    def _gathered(self, engine: Engine | None) -> tuple:
        """Every rank's probabilities, labels, paths, logits and patient ids, in dataset order."""
        probs, labels, paths, logits, patients = gather_samples(engine, self._probs, self._labels, self._paths,
                                                                self._logits, self._patients)
        return np.stack(probs), np.asarray(labels), paths, logits, patients

    def add_statistics(self, report: dict, probs: np.ndarray, labels: np.ndarray, paths: list, logits: list,
                       patients: list, kappa: str | None = None, extra_figures: dict | None = None,
                       extra_points: dict | None = None, extra_intervals: dict | None = None) -> None:
        """Add the configured statistics to ``report`` and write their files (rank 0 only).

        ``extra_figures``/``extra_points`` go to :meth:`EvaluationStatistics.compute`; ``extra_intervals`` maps a
        bootstrap figure's name to ``(report key, table label)``: its interval goes to ``report[key + "_ci95"]``
        and a row to ``metrics.md``.
        """
        st = self.statistics
        if not st.enabled:
            return
        report["kind"] = self.kind
        stats = st.compute(probs, labels, patients, self.kind, kappa, extra_figures, extra_points)
        iv = stats["intervals"]
        rows = []
        if iv:
            report["accuracy_ci95"] = iv["accuracy"]
            if "macro_auroc" in iv:
                report["macro_auc_ci95"] = iv["macro_auroc"]
            for c in self.class_names:
                report["per_class"][c]["auc_ci95"] = iv[f"{c}_auroc"]
            if kappa is not None:
                report["kappa_ci95"] = iv["kappa"]
            rows = [("accuracy", report["accuracy"], iv["accuracy"]),
                    *[(f"{c} AUROC", report["per_class"][c]["auc"], iv[f"{c}_auroc"]) for c in self.class_names],
                    ("macro AUROC", report["macro_auc"], iv.get("macro_auroc")),
                    *([("kappa", report["kappa"], iv["kappa"])] if kappa is not None else [])]
            for name, (key, label) in (extra_intervals or {}).items():
                report[f"{key}_ci95"] = iv[name]
                rows.append((label, report[key], iv[name]))
        st.add_to_report(report, stats, probs, labels, logits, self.output_dir)
        if iv:
            st.write_tables(self.output_dir, report, rows, f"Test figures on {report['n']} images with patient-level "
                                                           f"95% bootstrap intervals ({st.bootstrap} resamples).")
        onehot = np.eye(len(self.class_names), dtype=int)[labels]
        st.write_predictions(self.output_dir, paths, patients, "prediction",
                             [self.class_names[i] for i in probs.argmax(1)], probs, onehot, st.calls(probs))

    def write(self, engine: Engine | None = None) -> dict:
        probs, labels, paths, logits, patients = self._gathered(engine)  # every rank's
        report = classification_report(probs, labels, self.class_names)
        preds = probs.argmax(1)
        report["misclassified"] = [
            {"file": p, "true": self.class_names[t], "pred": self.class_names[q]}
            for p, t, q in zip(paths, labels, preds) if t != q
        ]
        if is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.add_statistics(report, probs, labels, paths, logits, patients)
            write_json(self.output_dir / "metrics.json", report)
            plot_confusion_matrix(np.asarray(report["confusion_matrix"]), self.class_names,
                                  self.output_dir / "confusion_matrix.png")
            onehot = np.eye(len(self.class_names), dtype=bool)[labels]
            plot_roc(probs, onehot, self.class_names, self.output_dir / "roc.png")
            logger.info("accuracy %.4f, misclassification rate %.4f, macro AUC %.4f on %d images -> %s",
                        report["accuracy"], report["misclassification_rate"], report["macro_auc"], report["n"],
                        self.output_dir)
        if engine is not None:
            engine.state.metrics.update({"accuracy": report["accuracy"], "macro_auc": report["macro_auc"]})
        return report


class PredictionWriter:
    """Write ``predictions.csv``: file, predicted class, one probability column per class, and error.

    With the model's ``model_json`` (or ``calls=True``), one ``call_<class>`` column per class follows the
    probabilities: 0/1 at the operating point stored in ``model.json`` (chosen on validation at the end of
    training; one-vs-rest for a multi-class model, whose ``prediction`` stays the most probable class), or at
    ``threshold`` when given.

    A row whose input could not be read carries the error (from ``TolerantDataset``) and empty predictions.
    The file is written atomically at the end of the run.

    Args:
        output_dir: destination folder.
        class_names: class names in output order.
        pred_key: output key of the class probabilities.
        filename: CSV name.
        model_json: the model's ``model.json`` (its stored operating points).
        threshold: a fixed threshold (one, or one per class) instead of the stored points.
        calls: write the ``call_`` columns (default: when ``model_json`` is given).
        extra_columns: output keys written as columns before ``error`` (e.g. the input gate's ``in_scope`` and
            ``out_of_scope_reason``, set by :class:`medplugin.handlers.InputGateHandler`); an item whose output
            says ``refused`` (``gate: refuse``) gets empty prediction and probabilities.
    """

    prediction_column = "prediction"
    lineterminator = "\r\n"  # the csv module's default

    def __init__(self, output_dir: str, class_names: Sequence[str], pred_key: str = "pred",
                 filename: str = "predictions.csv", model_json: str | None = None,
                 threshold: float | Sequence[float] | None = None, calls: bool | None = None,
                 extra_columns: Sequence[str] = ()) -> None:
        self.path = Path(output_dir) / filename
        self.class_names = list(class_names)
        self.pred_key = pred_key
        self.extra_columns = list(extra_columns)
        self.rows: list[list] = []
        self.calls = model_json is not None if calls is None else bool(calls)
        self.call_thresholds = (np.asarray(stored_thresholds(model_json, self.class_names, threshold))
                                if model_json is not None or threshold is not None else None)
        if self.calls and self.call_thresholds is None:
            raise ValueError("calls=True needs model_json (the stored operating points) or a threshold.")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        n_calls = len(self.class_names) if self.calls else 0
        for b, o in iter_samples(engine):
            err = b.get("error", "")
            extra = [_cell(o.get(k)) for k in self.extra_columns]
            if err or o.get("refused"):  # unreadable, or refused by the input gate: no predictions
                self.rows.append([b.get("path", ""), "", *[""] * (len(self.class_names) + n_calls), *extra, err])
                continue
            p = _probs(o, self.pred_key)
            calls = [str(int(v >= t)) for v, t in zip(p, self.call_thresholds)] if self.calls else []
            self.rows.append([b.get("path", ""), self._prediction(p), *[f"{v:.6f}" for v in p], *calls, *extra, ""])

    def header(self) -> list[str]:
        """The CSV's columns, in the order of each row."""
        return ["file", self.prediction_column, *[f"prob_{c}" for c in self.class_names],
                *([f"call_{c}" for c in self.class_names] if self.calls else []), *self.extra_columns, "error"]

    def _prediction(self, probs: np.ndarray) -> str:
        """The prediction column of one image: the most probable class."""
        return self.class_names[int(probs.argmax())]

    def write(self, engine: Engine | None = None) -> None:
        if not is_main_process():
            return
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator=self.lineterminator)
        w.writerow(self.header())
        w.writerows(self.rows)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
        n_err = sum(1 for r in self.rows if r[-1])
        logger.info("wrote %d predictions (%d errors) to %s", len(self.rows), n_err, self.path)
