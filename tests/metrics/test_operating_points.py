"""Operating points chosen on validation scores and applied, unchanged, to test scores."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from medplugin.metrics.operating_points import (
    Criterion,
    apply_operating_points,
    choose_operating_points,
    choose_threshold,
    operating_point_metrics,
    parse_criterion,
)


def _sens_spec(s, p, t):
    called = s >= t
    return (called & p).sum() / p.sum(), (~called & ~p).sum() / (~p).sum()


def test_criterion_strings_are_parsed_and_bad_ones_named():
    assert parse_criterion("youden") == Criterion("youden")
    assert parse_criterion(" Sensitivity:0.90 ") == Criterion("sensitivity", 0.9)
    assert str(parse_criterion("specificity:0.95")) == "specificity:0.95"
    for bad, msg in [("foo", "operating_point must be"), ("sensitivity", "needs a target"),
                     ("sensitivity:abc", "is not a number"), ("sensitivity:90", r"\(0, 1\]"),
                     ("specificity:0", r"\(0, 1\]"), ("youden:0.5", "takes no target"), (0.9, "got 0.9")]:
        with pytest.raises(ValueError, match=msg):
            parse_criterion(bad)


def test_youden_ties_go_to_the_lowest_threshold():
    s = np.array([0.1, 0.4, 0.35, 0.8])
    p = np.array([0, 0, 1, 1])
    # J = 0.5 at t=0.35 (sens 1, spec .5) and at t=0.8 (sens .5, spec 1): the more sensitive rule is kept
    pt = choose_threshold(s, p, "youden")
    assert pt == {"threshold": 0.35, "criterion": "youden", "sensitivity": 1.0, "specificity": 0.5,
                  "n_positive": 2, "n_negative": 2}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_points_are_the_best_rules_over_all_thresholds(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(300) < 0.3
    s = np.round(rng.normal(size=300) + 1.2 * p, 2)  # ties
    fpr, tpr, _ = roc_curve(p, s)
    yj = choose_threshold(s, p, "youden")
    assert yj["sensitivity"] + yj["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))
    cands = np.unique(s)
    sn = choose_threshold(s, p, "sensitivity:0.9")
    assert sn["sensitivity"] >= 0.9
    assert all(_sens_spec(s, p, t)[0] < 0.9 for t in cands[cands > sn["threshold"]])  # no stricter rule reaches it
    sp = choose_threshold(s, p, "specificity:0.95")
    assert sp["specificity"] >= 0.95
    assert all(_sens_spec(s, p, t)[1] < 0.95 for t in cands[cands < sp["threshold"]])
    assert (sn["sensitivity"], sn["specificity"]) == pytest.approx(_sens_spec(s, p, sn["threshold"]))


def test_threshold_chosen_on_validation_is_applied_unchanged_to_a_shifted_test_set():
    """A planted prevalence and score shift: the test sensitivity is measured at the validation threshold."""
    rng = np.random.default_rng(7)
    pv = rng.random(4000) < 0.5  # validation: prevalence 50%
    sv = 1 / (1 + np.exp(-(rng.normal(size=4000) + 1.5 * pv)))
    pt = rng.random(4000) < 0.1  # test: prevalence 10%, every score shifted up (another scanner)
    st = 1 / (1 + np.exp(-(rng.normal(size=4000) + 1.5 * pt + 0.8)))
    points = choose_operating_points(sv, pv, ["finding"], "sensitivity:0.90")
    t_val = points["finding"]["threshold"]
    assert points["finding"]["sensitivity"] == pytest.approx(0.90, abs=0.01)
    rep = operating_point_metrics(st, pt, points, ["finding"])["finding"]
    assert rep["threshold"] == t_val
    sens, spec = _sens_spec(st, pt, t_val)
    assert rep["sensitivity"] == pytest.approx(sens) and rep["specificity"] == pytest.approx(spec)
    assert rep["sensitivity"] > 0.95  # the shift raised it: not re-optimised to 0.90 on the test set
    retuned = choose_threshold(st, pt, "sensitivity:0.90")
    assert retuned["threshold"] > t_val and retuned["sensitivity"] == pytest.approx(0.90, abs=0.01)
    tp, fp = rep["tp"], rep["fp"]
    assert rep["ppv"] == pytest.approx(tp / (tp + fp)) and rep["ppv"] < 0.5  # PPV falls with the prevalence
    assert rep["npv"] == pytest.approx(rep["tn"] / (rep["tn"] + rep["fn"]))


def test_multiclass_points_are_one_vs_rest_and_multilabel_per_finding():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 600)
    logits = rng.normal(size=(600, 3)) + 2.0 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pts = choose_operating_points(probs, y, ["a", "b", "c"], "youden")
    assert list(pts) == ["a", "b", "c"]
    for c, name in enumerate("abc"):
        assert pts[name] == choose_threshold(probs[:, c], y == c, "youden")
    calls = apply_operating_points(probs, pts, ["a", "b", "c"])
    assert calls.shape == (600, 3) and set(np.unique(calls)) <= {0, 1}
    assert np.array_equal(calls[:, 1], (probs[:, 1] >= pts["b"]["threshold"]).astype(int))
    multi = rng.random((600, 2)) < 0.3
    ml = choose_operating_points(rng.random((600, 2)) + multi, multi.astype(int), ["x", "y"], "specificity:0.8")
    assert all(v["specificity"] >= 0.8 for v in ml.values())


def test_degenerate_classes_fall_back_and_say_so(caplog):
    s = np.array([[0.2, 0.9], [0.3, 0.8], [0.6, 0.1]])
    y = np.array([[0, 1], [0, 1], [0, 0]])  # the first finding has no positive validation image
    with caplog.at_level(logging.WARNING, logger="medplugin.metrics.operating_points"):
        pts = choose_operating_points(s, y, ["Hernia", "Effusion"], "youden", default_threshold=0.5)
    assert pts["Hernia"]["threshold"] == 0.5 and "no positive validation images" in pts["Hernia"]["fallback"]
    assert pts["Hernia"]["sensitivity"] is None and pts["Hernia"]["specificity"] == pytest.approx(2 / 3)
    assert "Hernia" in caplog.text and "fallback" not in pts["Effusion"]
    # a specificity target needs only negatives: chosen, with no sensitivity
    spec = choose_operating_points(s, y, ["Hernia", "Effusion"], "specificity:0.6")["Hernia"]
    assert "fallback" not in spec and spec["specificity"] >= 0.6 and spec["sensitivity"] is None
    json.dumps(pts, allow_nan=False)  # model.json stores it as plain JSON
    # calling nothing is a finite threshold just above the highest score
    top = choose_threshold([0.1, 0.9, 0.5], [1, 0, 0], "specificity:1.0")
    assert top["threshold"] > 0.9 and np.isfinite(top["threshold"]) and top["specificity"] == 1.0


def test_stored_points_must_name_every_class():
    pts = {"a": {"threshold": 0.3}}
    with pytest.raises(ValueError, match=r"no stored operating point for \['b'\]"):
        apply_operating_points(np.zeros((2, 2)), pts, ["a", "b"])
    with pytest.raises(ValueError, match="2 class names"):
        choose_operating_points(np.zeros((2, 3)), np.zeros((2, 3)), ["a", "b"])
