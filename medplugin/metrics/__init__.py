"""Metrics as plain functions on scikit-learn and as ignite ``EpochMetric``s gathered over ranks."""

from medplugin.metrics.classification import (
    ClassificationMetrics,
    classification_report,
    confusion_matrix,
    flatten_report,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
)
from medplugin.metrics.grading import (
    GradingMetrics,
    grading_report,
    pr_auc,
    quadratic_weighted_kappa,
    threshold_for_specificity,
)
from medplugin.metrics.multilabel import MultiLabelAUROC, flatten_multilabel_report, multilabel_report

__all__ = ["ClassificationMetrics", "GradingMetrics", "MultiLabelAUROC", "classification_report", "confusion_matrix",
           "flatten_multilabel_report", "flatten_report", "grading_report", "multilabel_report", "pr_auc",
           "quadratic_weighted_kappa", "roc_auc", "roc_curve", "sensitivity_specificity", "threshold_for_specificity"]
