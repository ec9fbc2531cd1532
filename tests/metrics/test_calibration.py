"""Temperature scaling recovers a planted temperature and lowers the ECE; the reliability diagram is drawn."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medplugin.metrics.calibration import (
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    probabilities_to_logits,
    reliability_bins,
)
from medplugin.visualize.reliability import plot_reliability


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _planted_softmax(seed=0, n=20000, c=4, t=2.5):
    """Labels drawn from softmax(z); the model reports t * z (over-confident): dividing by t calibrates it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, c))
    p = _softmax(z)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return t * z, y


def _ece_by_hand(conf, correct, bins=15):
    """Equal-width-bin ECE written out (Guo et al. 2017, Eq. 3), independent of MONAI."""
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    return sum(abs(conf[idx == b].mean() - correct[idx == b].mean()) * (idx == b).mean()
               for b in range(bins) if (idx == b).any())


def test_softmax_temperature_recovers_the_planted_one_and_lowers_the_ece():
    logits, y = _planted_softmax()
    t = fit_temperature(logits, y, "softmax")
    assert t == pytest.approx(2.5, rel=0.04)
    assert fit_temperature(logits, y, "softmax") == t  # deterministic
    rep = calibration_report(logits, y, t, "softmax")
    assert rep["ece_before"] > 0.05 and rep["ece_after"] < 0.02 and rep["ece_after"] < rep["ece_before"] / 3
    assert rep["nll_after"] < rep["nll_before"]
    after = apply_temperature(logits, t, "softmax")
    assert np.array_equal(after.argmax(1), logits.argmax(1))  # the calls are unchanged
    # MONAI's ECE is the top-label ECE of Guo et al.
    before = _softmax(logits)
    assert rep["ece_before"] == pytest.approx(_ece_by_hand(before.max(1), before.argmax(1) == y), abs=1e-5)


def test_sigmoid_temperatures_are_fitted_per_finding():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.0, (20000, 3))
    y = (rng.random((20000, 3)) < 1 / (1 + np.exp(-z))).astype(int)
    planted = np.array([0.5, 1.0, 2.5])
    temps = fit_temperature(z * planted, y, "sigmoid", class_names=["a", "b", "c"])
    assert temps == pytest.approx(planted.tolist(), rel=0.05)
    rep = calibration_report(z * planted, y, temps, "sigmoid", class_names=["a", "b", "c"])
    assert rep["ece_after"] < rep["ece_before"]
    assert rep["per_class"]["c"]["ece_after"] < rep["per_class"]["c"]["ece_before"]
    nll = negative_log_likelihood(z * planted, y, "sigmoid", temps)
    assert nll.shape == (3,) and (nll <= negative_log_likelihood(z * planted, y, "sigmoid", 1.0) + 1e-12).all()
    probs = apply_temperature(z * planted, temps, "sigmoid")
    assert probs == pytest.approx(1 / (1 + np.exp(-z)), abs=0.06)


def test_a_finding_without_positives_keeps_temperature_one(caplog):
    z = np.random.default_rng(2).normal(size=(50, 2))
    y = np.zeros((50, 2), int)
    y[::3, 1] = 1
    with caplog.at_level(logging.WARNING, logger="medplugin.metrics.calibration"):
        temps = fit_temperature(z, y, "sigmoid", class_names=["Hernia", "Effusion"])
    assert temps[0] == 1.0 and "Hernia" in caplog.text and "no positive" in caplog.text


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="mode must be one of"):
        fit_temperature(np.zeros((4, 2)), [0, 1, 0, 1], "softmx")
    with pytest.raises(ValueError, match="exactly one class per image"):
        fit_temperature(np.zeros((2, 2)), np.array([[1, 1], [0, 1]]), "softmax")
    with pytest.raises(ValueError, match="3 findings but 2 temperatures"):
        apply_temperature(np.zeros((2, 3)), [1.0, 2.0], "sigmoid")
    with pytest.raises(ValueError, match="positive finite"):
        apply_temperature(np.zeros((2, 3)), 0.0, "softmax")
    with pytest.raises(ValueError, match="must lie in"):
        expected_calibration_error(np.full((2, 2), 2.0), [0, 1], "softmax")


def test_probabilities_give_back_their_logits():
    p = _softmax(np.random.default_rng(3).normal(size=(10, 3)))
    assert apply_temperature(probabilities_to_logits(p, "softmax"), 1.0, "softmax") == pytest.approx(p)
    q = np.array([[0.1, 0.9], [0.5, 0.0]])
    back = apply_temperature(probabilities_to_logits(q, "sigmoid"), 1.0, "sigmoid")
    assert back == pytest.approx(q, abs=1e-6)


def test_reliability_diagram_is_written(tmp_path):
    logits, y = _planted_softmax(n=3000)
    t = fit_temperature(logits, y)
    before, after = apply_temperature(logits, 1.0), apply_temperature(logits, t)
    bins = {"before": reliability_bins(before, y), "after temperature scaling": reliability_bins(after, y)}
    assert bins["before"]["count"].sum() == 3000 and bins["before"]["confidence"].shape == (15,)
    out = tmp_path / "reliability.png"
    plot_reliability(bins, out, ece={"before": expected_calibration_error(before, y)["ece"]})
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
