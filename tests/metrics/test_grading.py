import numpy as np
import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import average_precision_score, cohen_kappa_score, roc_auc_score

from medplugin.metrics import (
    GradingMetrics,
    grading_report,
    pr_auc,
    quadratic_weighted_kappa,
    sensitivity_specificity,
    threshold_for_specificity,
)

GRADES = ["none", "mild", "moderate", "severe", "proliferative"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, 300)
    preds = np.clip(labels + rng.integers(-2, 3, 300) * (rng.random(300) < 0.4), 0, 4)
    assert quadratic_weighted_kappa(labels, preds, 5) == pytest.approx(
        cohen_kappa_score(labels, preds, weights="quadratic"))


def test_kappa_edge_cases():
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], 5) == pytest.approx(1.0)
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], 5) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match=r"preds must be in \[0, 4\], got values \[5\]"):
        quadratic_weighted_kappa([0], [5], 5)


@pytest.mark.parametrize("seed", [0, 1])
def test_pr_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.random(200) < 0.3
    scores = np.round(rng.random(200) * 0.6 + pos * 0.4, 1)  # many ties
    assert pr_auc(scores, pos) == pytest.approx(average_precision_score(pos, scores))
    assert np.isnan(pr_auc(scores, np.zeros(200, bool)))


def test_sensitivity_specificity_by_hand():
    scores = np.array([0.1, 0.4, 0.6, 0.9, 0.3, 0.7])
    pos = np.array([0, 0, 0, 1, 1, 1], bool)
    assert sensitivity_specificity(scores, pos, 0.5) == pytest.approx((2 / 3, 2 / 3))


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95])
def test_threshold_reaches_target_specificity_and_is_the_most_sensitive(target):
    rng = np.random.default_rng(3)
    pos = rng.random(400) < 0.4
    scores = rng.random(400) + pos * 0.5
    t = threshold_for_specificity(scores, pos, target)
    sens, spec = sensitivity_specificity(scores, pos, t)
    assert spec >= target
    lower = scores[scores < t]
    if lower.size:  # the next lower candidate threshold misses the target
        assert sensitivity_specificity(scores, pos, lower.max())[1] < target
    with pytest.raises(ValueError, match="target_specificity must be in"):
        threshold_for_specificity(scores, pos, 1.5)


def test_grading_report_for_both_tasks():
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, 250)
    logits = rng.normal(size=(250, 5)) + 2.0 * np.eye(5)[grades]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    r = grading_report(probs, grades, GRADES, task="grade", target_specificity=0.9)
    ref = grades >= 2
    assert r["auc"] == pytest.approx(roc_auc_score(ref, probs[:, 2:].sum(1)))
    assert r["kappa"] == pytest.approx(cohen_kappa_score(grades, probs.argmax(1), weights="quadratic"))
    assert r["operating_specificity"] >= 0.9
    binary = np.stack([1 - probs[:, 2:].sum(1), probs[:, 2:].sum(1)], 1)
    r2 = grading_report(binary, ref.astype(int), ["non-referable", "referable"], task="referable")
    assert r2["auc"] == pytest.approx(r["auc"]) and "kappa" not in r2
    assert r2["pr_auc"] == pytest.approx(average_precision_score(ref, binary[:, 1]))
    with pytest.raises(ValueError, match=r"task 'grade' needs \(N, 5\) probabilities"):
        grading_report(binary, ref.astype(int), ["a", "b"], task="grade")


def test_ignite_metric_on_an_engine():
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(4):
        lab = torch.as_tensor(rng.integers(0, 2, 8))
        p1 = torch.as_tensor(np.clip(lab.numpy() * 0.5 + rng.random(8) * 0.5, 0, 1), dtype=torch.float32)
        batches.append((list(torch.stack([1 - p1, p1], 1)), list(lab)))  # decollated, as MONAI's from_engine
    engine = Engine(lambda e, b: b)
    GradingMetrics(["no", "yes"], task="referable", prefix="val_").attach(engine, "val")
    GradingMetrics(["no", "yes"], task="referable", key="auc").attach(engine, "val_auc")
    state = engine.run(batches)
    probs = torch.cat([torch.stack(b[0]) for b in batches]).numpy()
    labels = torch.cat([torch.stack(b[1]) for b in batches]).numpy()
    assert state.metrics["val_auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert {"val_accuracy", "val_pr_auc", "val_sensitivity", "val_operating_specificity"} <= set(state.metrics)
    with pytest.raises(ValueError, match="key must be None or one of"):
        GradingMetrics(["no", "yes"], task="referable", key="kappa")


def test_kappa_keeps_absent_grades_on_the_scale():
    """Grades 2 and 3 absent: the disagreement 0 vs 4 still weighs (4 - 0)**2. By hand, weights (i-j)**2:
    observed pairs (0,1) (1,1) (4,4) (4,0) (1,0) give sum w*O = 1 + 16 + 1 = 18; the margins (true 0:1 1:2 4:2,
    predicted 0:2 1:2 4:1, n=5) give sum w*E = 28; kappa = 1 - 18/28 = 5/14 (0.0625 if the grades present were
    renumbered 0, 1, 2)."""
    assert quadratic_weighted_kappa([0, 1, 4, 4, 1], [1, 1, 4, 0, 0], 5) == pytest.approx(5 / 14, abs=1e-12)


@pytest.mark.filterwarnings("error::sklearn.exceptions.UndefinedMetricWarning")
def test_one_class_epoch_gives_nan_auc_and_pr_auc_not_an_error():
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.9, 0.1]])
    labels = torch.zeros(3, dtype=torch.long)  # no referable eye in the epoch
    m = GradingMetrics(["no", "yes"], task="referable", prefix="val_")
    m.reset()
    m.update((probs, labels))
    out = m.compute()
    assert np.isnan(out["val_auc"]) and np.isnan(out["val_pr_auc"]) and np.isnan(out["val_sensitivity"])
    assert out["val_specificity"] == 1.0 and out["val_accuracy"] == 1.0
    key = GradingMetrics(["no", "yes"], task="referable", key="auc")
    key.reset()
    key.update((probs, labels))
    assert np.isnan(key.compute())
    assert quadratic_weighted_kappa([2, 2], [2, 2], 5) == 1.0  # one grade everywhere: perfect agreement
