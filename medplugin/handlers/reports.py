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
from medplugin.metrics.classification import classification_report
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


class ClassificationReportWriter:
    """At the end of an evaluation, write ``metrics.json``, ``confusion_matrix.png`` and ``roc.png``.

    ``metrics.json`` holds accuracy, misclassification rate, macro one-vs-rest AUC, per-class sensitivity,
    specificity, precision and AUC, the confusion matrix, and the misclassified files. Under several processes
    the samples of every rank are gathered (in dataset order) and rank 0 writes.

    Args:
        output_dir: destination folder.
        class_names: class names in output order.
        pred_key: output key of the class probabilities.
        label_key: batch key of the true class index.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], pred_key: str = "pred",
                 label_key: str = "label") -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.pred_key, self.label_key = pred_key, label_key
        self._probs: list[np.ndarray] = []
        self._labels: list[int] = []
        self._paths: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.__init__(self.output_dir, self.class_names,
                                                                          self.pred_key, self.label_key))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            self._probs.append(_probs(o, self.pred_key))
            self._labels.append(int(torch.as_tensor(b[self.label_key]).reshape(-1)[0]))
            self._paths.append(str(b.get("path", b.get("image_path", ""))) if isinstance(b.get("path"), str) else "")

    def write(self, engine: Engine | None = None) -> dict:
        probs, labels, paths = gather_samples(engine, self._probs, self._labels, self._paths)  # every rank's
        probs, labels = np.stack(probs), np.asarray(labels)
        report = classification_report(probs, labels, self.class_names)
        preds = probs.argmax(1)
        report["misclassified"] = [
            {"file": p, "true": self.class_names[t], "pred": self.class_names[q]}
            for p, t, q in zip(paths, labels, preds) if t != q
        ]
        if is_main_process():
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

    A row whose input could not be read carries the error (from ``TolerantDataset``) and empty predictions.
    The file is written atomically at the end of the run.

    Args:
        output_dir: destination folder.
        class_names: class names in output order.
        pred_key: output key of the class probabilities.
        filename: CSV name.
        extra_columns: output keys written as columns before ``error`` (e.g. the input gate's ``in_scope`` and
            ``out_of_scope_reason``, set by :class:`medplugin.handlers.InputGateHandler`); an item whose output
            says ``refused`` (``gate: refuse``) gets empty prediction and probabilities.
    """

    prediction_column = "prediction"
    lineterminator = "\r\n"  # the csv module's default

    def __init__(self, output_dir: str, class_names: Sequence[str], pred_key: str = "pred",
                 filename: str = "predictions.csv", extra_columns: Sequence[str] = ()) -> None:
        self.path = Path(output_dir) / filename
        self.class_names = list(class_names)
        self.pred_key = pred_key
        self.extra_columns = list(extra_columns)
        self.rows: list[list] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            err = b.get("error", "")
            extra = [_cell(o.get(k)) for k in self.extra_columns]
            if err or o.get("refused"):  # unreadable, or refused by the input gate: no predictions
                self.rows.append([b.get("path", ""), "", *[""] * len(self.class_names), *extra, err])
                continue
            p = _probs(o, self.pred_key)
            self.rows.append([b.get("path", ""), self._prediction(p), *[f"{v:.6f}" for v in p], *extra, ""])

    def _prediction(self, probs: np.ndarray) -> str:
        """The prediction column of one image: the most probable class."""
        return self.class_names[int(probs.argmax())]

    def write(self, engine: Engine | None = None) -> None:
        if not is_main_process():
            return
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator=self.lineterminator)
        w.writerow(["file", self.prediction_column, *[f"prob_{c}" for c in self.class_names], *self.extra_columns,
                    "error"])
        w.writerows(self.rows)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
        n_err = sum(1 for r in self.rows if r[-1])
        logger.info("wrote %d predictions (%d errors) to %s", len(self.rows), n_err, self.path)
