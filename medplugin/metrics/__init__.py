"""Metrics as plain functions and as ignite metrics."""

from medplugin.metrics.classification import (
    ClassificationMetrics,
    classification_report,
    confusion_matrix,
    flatten_report,
    roc_auc,
    roc_curve,
)

__all__ = [
    "ClassificationMetrics",
    "classification_report",
    "confusion_matrix",
    "flatten_report",
    "roc_auc",
    "roc_curve",
]
