"""The calls the handlers make: model.json's temperature and points, metrics.json's intervals, reliability.png."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medplugin.metrics.calibration import apply_temperature, expected_calibration_error
from medplugin.metrics.statistics import evaluation_statistics, fit_model_statistics, write_reliability

FINDINGS = ["Effusion", "Mass", "Hernia"]


def _multilabel(seed, n, prevalence, shift=0.0, t=2.0):
    """Sigmoid logits t times too confident; Hernia has no positive image when its prevalence is 0."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < prevalence).astype(int)
    z = 1.5 * y - 1.5 + rng.normal(size=(n, 3)) + shift
    return t * z, y, np.arange(n) // 3


def test_training_stores_temperature_and_points_chosen_on_calibrated_probabilities():
    logits, y, _ = _multilabel(0, 3000, [0.3, 0.2, 0.0])
    stats = fit_model_statistics(logits, y, FINDINGS, "sigmoid", "sensitivity:0.9")
    json.dumps({k: stats[k] for k in ("temperature", "operating_points")}, allow_nan=False)  # model.json
    assert stats["temperature"][0] > 1.2 and stats["temperature"][2] == 1.0  # over-confident; Hernia kept at 1
    pts = stats["operating_points"]
    assert pts["Effusion"]["criterion"] == "sensitivity:0.9" and pts["Effusion"]["sensitivity"] >= 0.9
    assert "fallback" in pts["Hernia"]  # no positive validation image
    # the threshold is one of the calibrated validation probabilities (what evaluation thresholds later)
    calibrated = apply_temperature(logits, stats["temperature"], "sigmoid")[:, 0]
    assert np.isclose(calibrated, pts["Effusion"]["threshold"], rtol=0, atol=1e-15).any()
    assert stats["validation_calibration"]["ece_after"] < stats["validation_calibration"]["ece_before"]


def test_evaluation_reports_intervals_and_the_stored_points(tmp_path):
    val_logits, val_y, _ = _multilabel(1, 3000, [0.3, 0.2, 0.05])
    stats = fit_model_statistics(val_logits, val_y, FINDINGS, "sigmoid", "youden")
    logits, y, pid = _multilabel(2, 900, [0.1, 0.1, 0.02], shift=0.3)
    probs = apply_temperature(logits, stats["temperature"], "sigmoid")
    m = evaluation_statistics(probs, y, FINDINGS, "multilabel", pid, stats["operating_points"], n_resamples=300)
    for k in ("Effusion_auroc", "mean_auroc", "Mass_sensitivity", "Hernia_npv"):
        lo, hi = m[f"{k}_ci95"]
        assert lo <= m[k] <= hi, k
    op = m["operating_points"]["Mass"]
    assert op["threshold"] == stats["operating_points"]["Mass"]["threshold"]
    assert m["Mass_sensitivity"] == pytest.approx(op["sensitivity"])
    assert m["bootstrap"]["resampling_unit"] == "patient" and m["bootstrap"]["n_patients"] == 300
    assert m["bootstrap"]["interval"] == "ci95" and m["bootstrap"]["n_resamples"] == 300
    ece = write_reliability(logits, y, stats["temperature"], "sigmoid", tmp_path / "reliability.png", FINDINGS)
    # the test set's prevalence and scores shifted: calibration may not improve there; the ECEs are reported
    assert ece["ece_before"] == pytest.approx(expected_calibration_error(apply_temperature(logits, 1.0, "sigmoid"), y,
                                                                         "sigmoid")["ece"])
    assert 0 <= ece["ece_after"] <= 1 and set(ece["per_class"]) == set(FINDINGS)
    assert (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_multiclass_evaluation_keeps_the_argmax_and_adds_one_vs_rest_points():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 1200)
    logits = 3.0 * (rng.normal(size=(1200, 3)) + 1.5 * np.eye(3)[y])
    stats = fit_model_statistics(logits[:600], y[:600], ["a", "b", "c"], "softmax", "specificity:0.95")
    assert isinstance(stats["temperature"], float) and stats["temperature"] > 1.5
    probs = apply_temperature(logits[600:], stats["temperature"], "softmax")
    m = evaluation_statistics(probs, y[600:], ["a", "b", "c"], "multiclass", None, stats["operating_points"],
                              n_resamples=200, kappa="quadratic")
    assert m["accuracy"] == pytest.approx(np.mean(logits[600:].argmax(1) == y[600:]))
    assert {"macro_auroc_ci95", "kappa_ci95", "c_ppv_ci95"} <= set(m)
    assert m["bootstrap"]["resampling_unit"] == "image"
