import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_cm
from sklearn.metrics import roc_auc_score

from medplugin.metrics import ClassificationMetrics, classification_report, roc_auc


def test_report_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probs = rng.random((200, 3)) + np.eye(3)[labels] * 0.6
    r = classification_report(probs, labels, ["a", "b", "c"])
    preds = probs.argmax(1)
    assert r["accuracy"] == pytest.approx((preds == labels).mean())
    assert r["misclassification_rate"] == pytest.approx(1 - r["accuracy"])
    np.testing.assert_array_equal(r["confusion_matrix"], sk_cm(labels, preds))
    for c, name in enumerate("abc"):
        assert r["per_class"][name]["auc"] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
        tp = ((preds == c) & (labels == c)).sum()
        assert r["per_class"][name]["sensitivity"] == pytest.approx(tp / (labels == c).sum())
    assert r["macro_auc"] == pytest.approx(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(3)]))


def test_auc_with_ties_and_missing_class():
    assert roc_auc(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 1])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([0, 0])))


def test_ignite_metric_accumulates_decollated_batches():
    m = ClassificationMetrics(["x", "y"], prefix="val_")
    m.reset()
    m.update(([torch.tensor([0.9, 0.1]), torch.tensor([0.2, 0.8])], [torch.tensor(0), torch.tensor(1)]))
    m.update((torch.tensor([[0.3, 0.7]]), torch.tensor([0])))
    out = m.compute()
    assert out["val_accuracy"] == pytest.approx(2 / 3)
    assert out["val_x_sensitivity"] == pytest.approx(0.5)
    key = ClassificationMetrics(["x", "y"], key="accuracy")
    key.reset()
    key.update((torch.tensor([[0.9, 0.1]]), torch.tensor([0])))
    assert key.compute() == 1.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="key must be None or one of"):
        ClassificationMetrics(["a", "b"], key="f1")
    with pytest.raises(ValueError, match=r"probs must be \(N, 2\)"):
        classification_report(np.zeros((3, 3)), np.zeros(3), ["a", "b"])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        classification_report(np.zeros((2, 2)), np.array([0, 5]), ["a", "b"])
