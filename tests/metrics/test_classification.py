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


def _probs_labels(n=40, c=3, seed=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    probs = rng.random((n, c)) + 0.5 * np.eye(c)[labels]
    return (probs / probs.sum(1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize("form", ["batch", "batch_col", "onehot", "metatensor", "decollated", "decollated_onehot"])
def test_every_input_form_of_the_evaluators_gives_the_same_figures(form):
    """Batches as MONAI's evaluators hand them over (through ``from_engine``): batch tensors or MetaTensors,
    labels as indices, (B, 1) columns or one-hot rows, or decollated lists of per-sample tensors."""
    from ignite.engine import Engine
    from monai.data import MetaTensor

    probs, labels = _probs_labels()
    p, y = torch.from_numpy(probs), torch.from_numpy(labels)
    batches = []
    for i in range(0, 40, 8):
        pb, yb = p[i:i + 8], y[i:i + 8]
        batches.append({
            "batch": (pb, yb), "batch_col": (pb, yb[:, None]),
            "onehot": (pb, torch.nn.functional.one_hot(yb, 3).float()),
            "metatensor": (MetaTensor(pb), MetaTensor(yb[:, None])),
            "decollated": ([MetaTensor(v) for v in pb], list(yb)),
            "decollated_onehot": ([MetaTensor(v) for v in pb], list(torch.nn.functional.one_hot(yb, 3))),
        }[form])
    engine = Engine(lambda e, b: b)
    ClassificationMetrics(["a", "b", "c"], prefix="val_").attach(engine, "val")
    ClassificationMetrics(["a", "b", "c"], key="macro_auc").attach(engine, "val_auc")
    m = engine.run(batches).metrics
    preds = probs.argmax(1)
    assert m["val_accuracy"] == pytest.approx((preds == labels).mean(), abs=1e-12)
    for c, name in enumerate("abc"):
        assert m[f"val_{name}_auc"] == pytest.approx(roc_auc_score(labels == c, probs[:, c]), abs=1e-12)
    assert m["val_auc"] == pytest.approx(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(3)]),
                                         abs=1e-12)


@pytest.mark.filterwarnings("error::sklearn.exceptions.UndefinedMetricWarning")
def test_a_class_absent_from_the_epoch_has_nan_auc_left_out_of_the_mean():
    """Class c neither present nor predicted: its AUC, sensitivity, recall, precision and F1 are NaN (reported,
    not raised, no warning); the macro AUC is the mean over the classes with both outcomes; the weighted average
    counts an undefined precision as 0 (weight 0 here)."""
    from sklearn.metrics import precision_score

    probs, labels = _probs_labels()
    labels[labels == 2] = 1
    probs[:, 2] = np.minimum(probs[:, 2], probs[:, :2].max(1) - 1e-3)  # class c never predicted either
    m = ClassificationMetrics(["a", "b", "c"], prefix="val_")
    m.reset()
    m.update((torch.from_numpy(probs), torch.from_numpy(labels)))
    out = m.compute()
    for k in ("c_auc", "c_sensitivity", "c_recall", "c_precision", "c_f1"):
        assert np.isnan(out[f"val_{k}"]), k
    assert out["val_c_specificity"] == 1.0
    assert out["val_weighted_precision"] == pytest.approx(
        precision_score(labels, probs.argmax(1), average="weighted", zero_division=0), abs=1e-12)
    assert out["val_macro_auc"] == pytest.approx(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in (0, 1)]),
                                                 abs=1e-12)
    key = ClassificationMetrics(["a", "b", "c"], key="macro_auc")
    key.reset()
    key.update((torch.from_numpy(probs[labels == 0]), torch.from_numpy(labels[labels == 0])))
    assert np.isnan(key.compute())  # one class in the whole epoch: no AUC defined at all


def test_an_epoch_without_samples_reports_nan_not_an_error():
    m = ClassificationMetrics(["a", "b"], prefix="val_")
    m.reset()
    out = m.compute()
    assert np.isnan(out["val_accuracy"]) and np.isnan(out["val_macro_auc"]) and np.isnan(out["val_a_auc"])


def test_wrong_width_is_named():
    m = ClassificationMetrics(["a", "b", "c"])
    with pytest.raises(ValueError, match=r"expected \(batch, 3\) probabilities, got shape \(2, 2\)"):
        m.update((torch.zeros(2, 2), torch.zeros(2)))
