"""Metrics as plain functions and as ignite metrics."""

from medplugin.metrics.classification import (
    ClassificationMetrics,
    classification_report,
    confusion_matrix,
    flatten_report,
    roc_auc,
    roc_curve,
)
from medplugin.metrics.multilabel import MultiLabelAUROC, flatten_multilabel_report, multilabel_report
from medplugin.metrics.grading import (
    GradingMetrics,
    grading_report,
    pr_auc,
    quadratic_weighted_kappa,
    sensitivity_specificity,
    threshold_for_specificity,
)

__all__ = [
    "MultiLabelAUROC",
    "flatten_multilabel_report",
    "multilabel_report",
    "ClassificationMetrics",
    "GradingMetrics",
    "grading_report",
    "pr_auc",
    "quadratic_weighted_kappa",
    "sensitivity_specificity",
    "threshold_for_specificity",
    "classification_report",
    "confusion_matrix",
    "flatten_report",
    "roc_auc",
    "roc_curve",
]
