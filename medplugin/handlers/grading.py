"""Evaluation report of diabetic-retinopathy screening and grading: metrics.json, ROC, PR, confusion matrix."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from ignite.engine import Engine

from medplugin.handlers._engine import is_main_process
from medplugin.handlers.reports import ClassificationReportWriter
from medplugin.metrics.bootstrap import auroc_figure
from medplugin.metrics.classification import sensitivity_specificity
from medplugin.metrics.grading import REFERABLE_GRADE, grading_report, referable_scores
from medplugin.utils import write_json
from medplugin.visualize.plots import plot_confusion_matrix, plot_pr, plot_roc

__all__ = ["GradingReportWriter", "REFERABLE_POINT"]

logger = logging.getLogger(__name__)

#: the operating point of referable DR stored in a grading model's model.json (grades 2-4 summed); a referable
#: model's is its class "referable"
REFERABLE_POINT = "referable DR"


class GradingReportWriter(ClassificationReportWriter):
    """At the end of an evaluation, write ``metrics.json``, ``roc.png``, ``pr.png`` and ``confusion_matrix.png``.

    ``metrics.json`` holds :func:`medplugin.metrics.grading_report` (accuracy, per-class figures, confusion
    matrix; referable-DR ROC AUC, PR AUC, sensitivity and specificity at ``threshold``; quadratic weighted kappa
    for grading) and the misclassified files. The ROC and PR curves are those of referable DR (grade >= 2), the
    screening decision, for either task.

    The screening decision is taken at an operating point chosen on validation: with ``model_json`` and
    ``threshold=None``, ``threshold``, ``sensitivity`` and ``specificity`` are those of the point stored for
    referable DR (the class ``referable`` of a referable model, :data:`REFERABLE_POINT` of a grading model), and
    ``operating_points`` gives its PPV and NPV too. A threshold reaching ``target_specificity`` *chosen on the
    evaluated images themselves* (an optimistic figure) is reported only when ``target_specificity`` is given,
    as ``operating_threshold``/``operating_sensitivity``/``operating_specificity`` labelled by
    ``operating_threshold_chosen_on``. The statistics arguments are those of :class:`ClassificationReportWriter`;
    with ``bootstrap`` the referable ``auc`` and ``kappa`` get their intervals too.

    Args:
        output_dir: destination folder.
        class_names: class names in output order.
        task: ``"referable"`` or ``"grade"``.
        target_specificity: the specificity of an extra operating point chosen on the test images (``None``:
            not reported).
        threshold: the fixed decision threshold of referable DR; ``None``: the stored validation point
            (``model_json`` needed).
        pred_key: output key of the class probabilities.
        label_key: batch key of the true class index.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], task: str = "referable",
                 target_specificity: float | None = 0.9, threshold: float | None = 0.5, pred_key: str = "pred",
                 label_key: str = "label", **statistics) -> None:
        super().__init__(output_dir, class_names, pred_key=pred_key, label_key=label_key, **statistics)
        if threshold is None and self.statistics.model_json is None:
            raise ValueError("threshold=None takes referable DR's operating point from model_json; give model_json "
                             "(the trained model's model.json) or a threshold.")
        self.task = task
        self.target_specificity = None if target_specificity is None else float(target_specificity)
        self.threshold = None if threshold is None else float(threshold)

    def _referable_point(self) -> tuple[str, dict] | None:
        """(name, stored point) of referable DR, from model.json (``None`` without one)."""
        from medplugin.metrics.stored import read_model_meta

        name = "referable" if self.task == "referable" else REFERABLE_POINT
        if self.task == "referable" and name not in self.class_names:
            name = self.class_names[1]
        point = (read_model_meta(self.statistics.model_json).get("operating_points") or {}).get(name)
        if not isinstance(point, dict) or "threshold" not in point:
            return None
        return name, point

    def write(self, engine: Engine | None = None) -> dict:
        probs, labels, paths, logits, patients = self._gathered(engine)  # every rank's
        stored = self._referable_point() if self.threshold is None else None
        if self.threshold is None and stored is None:
            logger.warning("%s stores no operating point for referable DR: called at 0.5", self.statistics.model_json)
        threshold = self.threshold if self.threshold is not None else float(stored[1]["threshold"]) if stored else 0.5
        report = grading_report(probs, labels, self.class_names, self.task, self.target_specificity or 0.9, threshold)
        if self.target_specificity is None:
            for k in ("target_specificity", "operating_threshold", "operating_sensitivity", "operating_specificity"):
                report.pop(k)
        else:
            report["operating_threshold_chosen_on"] = "the evaluated images (optimistic)"
        if self.threshold is None:
            report["threshold_chosen_on"] = "validation (model.json)" if stored else "none (default 0.5)"
        preds = probs.argmax(1)
        report["misclassified"] = [
            {"file": p, "true": self.class_names[t], "pred": self.class_names[q]}
            for p, t, q in zip(paths, labels, preds) if t != q
        ]
        scores = referable_scores(probs, self.task)
        positives = labels >= (1 if self.task == "referable" else REFERABLE_GRADE)
        if is_main_process():
            out = self.output_dir
            out.mkdir(parents=True, exist_ok=True)
            point = {"threshold": threshold, "criterion": (stored[1].get("criterion") if stored else
                                                           "fixed threshold" if self.threshold is not None
                                                           else "default (no stored operating point)")}
            kappa = "quadratic" if self.task == "grade" else None
            self.add_statistics(report, probs, labels, paths, logits, patients, kappa,
                                extra_figures={"referable_auc": auroc_figure(scores, positives)},
                                extra_points={REFERABLE_POINT: (scores, positives, point)},
                                extra_intervals={"referable_auc": ("auc", "referable DR AUROC"),
                                                 f"{REFERABLE_POINT}_sensitivity": ("sensitivity",
                                                                                    "referable DR sensitivity"),
                                                 f"{REFERABLE_POINT}_specificity": ("specificity",
                                                                                    "referable DR specificity")})
            write_json(out / "metrics.json", report)
            plot_confusion_matrix(
                np.asarray(report["confusion_matrix"]), self.class_names, out / "confusion_matrix.png"
            )
            plot_roc(scores[:, None], positives[:, None], ["referable DR"], out / "roc.png", title="ROC, referable DR")
            plot_pr(scores[:, None], positives[:, None], ["referable DR"], out / "pr.png",
                    title="precision-recall, referable DR")
            sens, spec = sensitivity_specificity(scores, positives, threshold)
            logger.info(
                "referable DR: AUC %.4f, PR AUC %.4f, sens/spec %.3f/%.3f at %.4f (%s)%s; accuracy %.4f on %d images "
                "-> %s", report["auc"], report["pr_auc"], sens, spec, threshold, point["criterion"],
                f"; kappa {report['kappa']:.4f}" if "kappa" in report else "", report["accuracy"], report["n"], out)
        if engine is not None:
            engine.state.metrics.update({k: report[k] for k in ("accuracy", "auc", "pr_auc", "kappa") if k in report})
        return report
