"""GradingReportWriter on a tiny evaluator engine: referable-DR and grading figures equal scikit-learn's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from medplugin.handlers import GradingReportWriter
from tests.handlers._evaluator import evaluator, sample

GRADES = ["no DR", "mild", "moderate", "severe", "proliferative"]


def _operating_point(positives, scores, target):
    """The lowest threshold whose specificity reaches ``target``, from scikit-learn's full ROC curve."""
    fpr, tpr, thresholds = skm.roc_curve(positives, scores, drop_intermediate=False)
    ok = [(t, s) for t, f, s in zip(thresholds, fpr, tpr) if 1 - f >= target]
    return min(ok)


def _run(tmp_path, probs, labels, **kw):
    samples = [sample(f"/fundus/{i:02d}.jpeg", lab) for i, lab in enumerate(labels)]
    engine, batches = evaluator(samples, probs, batch_size=4)
    GradingReportWriter(str(tmp_path), **kw).attach(engine)
    engine.run(batches, max_epochs=1)
    return json.loads((tmp_path / "metrics.json").read_text()), engine


def test_grade_task_kappa_auc_pr_auc_and_operating_point(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 0, 2])
    logits = rng.normal(0, 1, (16, 5)) + 2.0 * np.eye(5)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report, engine = _run(tmp_path, probs, labels, class_names=GRADES, task="grade", target_specificity=0.8,
                          threshold=0.4)

    pred = probs.argmax(1)
    scores, positives = probs[:, 2:].sum(1), labels >= 2  # referable DR: grade 2 or worse
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert report["confusion_matrix"] == skm.confusion_matrix(labels, pred, labels=range(5)).tolist()
    assert report["kappa"] == pytest.approx(skm.cohen_kappa_score(labels, pred, weights="quadratic"))
    assert report["auc"] == pytest.approx(skm.roc_auc_score(positives, scores))
    assert report["pr_auc"] == pytest.approx(skm.average_precision_score(positives, scores))
    assert report["sensitivity"] == pytest.approx(skm.recall_score(positives, scores >= 0.4))
    assert report["specificity"] == pytest.approx(skm.recall_score(~positives, scores < 0.4))
    t, sens = _operating_point(positives, scores, 0.8)
    assert report["operating_threshold"] == pytest.approx(t) and report["operating_sensitivity"] == pytest.approx(sens)
    assert report["operating_specificity"] >= 0.8
    assert report["referable_prevalence"] == pytest.approx(positives.mean())
    wrong = np.flatnonzero(pred != labels)
    assert [m["file"] for m in report["misclassified"]] == [f"/fundus/{i:02d}.jpeg" for i in wrong]
    assert {k: engine.state.metrics[k] for k in ("accuracy", "auc", "pr_auc", "kappa")} == pytest.approx(
        {k: report[k] for k in ("accuracy", "auc", "pr_auc", "kappa")})
    for png in ("roc.png", "pr.png", "confusion_matrix.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_referable_task_uses_the_second_probability_and_has_no_kappa(tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p1 = np.array([0.1, 0.4, 0.6, 0.7, 0.3, 0.9, 0.2, 0.55])
    report, engine = _run(tmp_path, np.stack([1 - p1, p1], 1), labels, class_names=["no", "referable"])
    assert report["task"] == "referable" and "kappa" not in report and "kappa" not in engine.state.metrics
    assert report["auc"] == pytest.approx(skm.roc_auc_score(labels, p1))
    assert report["pr_auc"] == pytest.approx(skm.average_precision_score(labels, p1))
    assert report["sensitivity"] == pytest.approx(skm.recall_score(labels, p1 >= 0.5))
    t, _ = _operating_point(labels.astype(bool), p1, 0.9)
    assert report["operating_threshold"] == pytest.approx(t)
