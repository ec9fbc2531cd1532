"""Metrics as plain functions on scikit-learn and as ignite ``EpochMetric``s gathered over ranks."""

from medplugin.metrics.bootstrap import (
    PatientBootstrap,
    bootstrap_intervals,
    bootstrap_metric,
    ci_entries,
    format_ci,
    headline_figures,
)
from medplugin.metrics.calibration import (
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from medplugin.metrics.classification import (
    ClassificationMetrics,
    classification_report,
    confusion_matrix,
    flatten_report,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
)
from medplugin.metrics.comparison import delong_test, paired_bootstrap
from medplugin.metrics.grading import (
    GradingMetrics,
    grading_report,
    pr_auc,
    quadratic_weighted_kappa,
    threshold_for_specificity,
)
from medplugin.metrics.multilabel import MultiLabelAUROC, flatten_multilabel_report, multilabel_report
from medplugin.metrics.operating_points import (
    apply_operating_points,
    choose_operating_points,
    operating_point_metrics,
    parse_criterion,
)
from medplugin.metrics.statistics import evaluation_statistics, fit_model_statistics, write_reliability
from medplugin.metrics.stored import read_model_meta, stored_operating_points, stored_temperature, stored_thresholds

__all__ = ["ClassificationMetrics", "GradingMetrics", "MultiLabelAUROC", "classification_report", "confusion_matrix",
           "flatten_multilabel_report", "flatten_report", "grading_report", "multilabel_report", "pr_auc",
           "quadratic_weighted_kappa", "roc_auc", "roc_curve", "sensitivity_specificity", "threshold_for_specificity"]
# the statistics of an evaluation: operating points, calibration, patient-level intervals, comparisons
__all__ += [
    "PatientBootstrap",
    "bootstrap_intervals",
    "bootstrap_metric",
    "ci_entries",
    "format_ci",
    "headline_figures",
    "apply_temperature",
    "calibration_report",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "delong_test",
    "paired_bootstrap",
    "apply_operating_points",
    "choose_operating_points",
    "operating_point_metrics",
    "parse_criterion",
    "evaluation_statistics",
    "fit_model_statistics",
    "write_reliability",
    "read_model_meta",
    "stored_operating_points",
    "stored_temperature",
    "stored_thresholds",
]
