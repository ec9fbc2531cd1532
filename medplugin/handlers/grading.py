"""Evaluation report of diabetic-retinopathy screening and grading: metrics.json, ROC, PR, confusion matrix."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from ignite.engine import Engine, Events

from medplugin.handlers._engine import gather_samples, is_main_process
from medplugin.handlers.reports import ClassificationReportWriter
from medplugin.metrics.grading import REFERABLE_GRADE, grading_report, referable_scores
from medplugin.utils import write_json
from medplugin.visualize.plots import plot_confusion_matrix, plot_pr, plot_roc

__all__ = ["GradingReportWriter"]

logger = logging.getLogger(__name__)


class GradingReportWriter(ClassificationReportWriter):
    """At the end of an evaluation, write ``metrics.json``, ``roc.png``, ``pr.png`` and ``confusion_matrix.png``.

    ``metrics.json`` holds :func:`medplugin.metrics.grading_report` (accuracy, per-class figures, confusion
    matrix; referable-DR ROC AUC, PR AUC, sensitivity and specificity at ``threshold`` and at the threshold
    reaching ``target_specificity``; quadratic weighted kappa for grading) and the misclassified files. The ROC
    and PR curves are those of referable DR (grade >= 2), the screening decision, for either task.

    Args:
        output_dir: destination folder.
        class_names: class names in output order.
        task: ``"referable"`` or ``"grade"``.
        target_specificity: specificity of the reported operating point.
        threshold: the fixed decision threshold.
        pred_key: output key of the class probabilities.
        label_key: batch key of the true class index.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], task: str = "referable",
                 target_specificity: float = 0.9, threshold: float = 0.5, pred_key: str = "pred",
                 label_key: str = "label") -> None:
        super().__init__(output_dir, class_names, pred_key=pred_key, label_key=label_key)
        self.task, self.target_specificity, self.threshold = task, float(target_specificity), float(threshold)

    def _reset(self, engine: Engine | None = None) -> None:
        self._probs, self._labels, self._paths = [], [], []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def write(self, engine: Engine | None = None) -> dict:
        probs, labels, paths = gather_samples(engine, self._probs, self._labels, self._paths)  # every rank's
        probs, labels = np.stack(probs), np.asarray(labels)
        report = grading_report(probs, labels, self.class_names, self.task, self.target_specificity, self.threshold)
        preds = probs.argmax(1)
        report["misclassified"] = [
            {"file": p, "true": self.class_names[t], "pred": self.class_names[q]}
            for p, t, q in zip(paths, labels, preds) if t != q
        ]
        if is_main_process():
            out = self.output_dir
            write_json(out / "metrics.json", report)
            plot_confusion_matrix(
                np.asarray(report["confusion_matrix"]), self.class_names, out / "confusion_matrix.png"
            )
            scores = referable_scores(probs, self.task)[:, None]
            positives = (labels >= (1 if self.task == "referable" else REFERABLE_GRADE))[:, None]
            plot_roc(scores, positives, ["referable DR"], out / "roc.png", title="ROC, referable DR")
            plot_pr(scores, positives, ["referable DR"], out / "pr.png", title="precision-recall, referable DR")
            logger.info(
                "referable DR: AUC %.4f, PR AUC %.4f, sens/spec %.3f/%.3f at %.2f, %.3f/%.3f at %.4f "
                "(target specificity %.2f)%s; accuracy %.4f on %d images -> %s",
                report["auc"], report["pr_auc"], report["sensitivity"], report["specificity"], self.threshold,
                report["operating_sensitivity"], report["operating_specificity"], report["operating_threshold"],
                self.target_specificity, f"; kappa {report['kappa']:.4f}" if "kappa" in report else "",
                report["accuracy"], report["n"], out)
        if engine is not None:
            engine.state.metrics.update({k: report[k] for k in ("accuracy", "auc", "pr_auc", "kappa") if k in report})
        return report
