"""Today's metrics reproduce, within 1e-12, the numbers the hand-written metrics gave before the scikit-learn
rewrite (frozen in ``frozen_outputs.json`` with their inputs: ties, absent and never-predicted classes, a
multi-label column without positives and one without negatives, sparse grades, empty epochs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from sklearn.exceptions import UndefinedMetricWarning

import medplugin.metrics as M
from medplugin.metrics.grading import flatten_grading_report, referable_scores

FROZEN = json.loads((Path(__file__).parent / "frozen_outputs.json").read_text())
INPUTS, EXPECTED = FROZEN["inputs"], FROZEN["expected"]
C3, C2, C4 = ["a", "b", "c"], ["neg", "pos"], ["w", "x", "y", "z"]
G5 = ["none", "mild", "moderate", "severe", "proliferative"]
ML = ["A", "B", "C", "D"]
# the reports and ignite metrics give NaN for undefined figures without scikit-learn's warnings
pytestmark = pytest.mark.filterwarnings("error::sklearn.exceptions.UndefinedMetricWarning")


def assert_same(got, want, where="") -> None:
    """Equal structure, exact integers and strings, floats within 1e-12 (NaN equals NaN, inf equals inf)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_same(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, (list, tuple)):
        got = list(np.asarray(got).tolist()) if isinstance(got, np.ndarray) else list(got)
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, str) or (isinstance(want, int) and not isinstance(want, bool)):
        assert got == want, f"{where}: {got!r} != {want!r}"
    else:
        got, want = float(got), float(want)
        if math.isnan(want) or math.isinf(want):
            assert (math.isnan(got) and math.isnan(want)) or got == want, f"{where}: {got} != {want}"
        else:
            assert abs(got - want) <= 1e-12, f"{where}: {got!r} != {want!r}"


def _data(key):
    return np.asarray(INPUTS[key]["probs"]), np.asarray(INPUTS[key]["labels"])


@pytest.mark.parametrize("key,names", [("mc3", C3), ("bin_ties", C2), ("mc4_missing", C4)])
def test_classification_functions(key, names):
    probs, labels = _data(key)
    rep = M.classification_report(probs, labels, names)
    assert_same(rep, EXPECTED[f"classification_report/{key}"], key)
    assert_same(M.flatten_report(rep, "val_"), EXPECTED[f"flatten_report/{key}"], key)
    assert_same(M.classification_report(probs, np.eye(len(names))[labels], names),
                EXPECTED[f"classification_report_onehot/{key}"], key)
    assert_same(M.confusion_matrix(labels, probs.argmax(1), len(names)), EXPECTED[f"confusion_matrix/{key}"], key)
    for c in range(len(names)):
        assert_same(M.roc_auc(probs[:, c], labels == c), EXPECTED[f"roc_auc/{key}/{c}"], f"{key} auc {c}")
        if (labels == c).any():
            curve = M.roc_curve(probs[:, c], labels == c)
        else:  # no positives: the curve's tpr is NaN, and scikit-learn says so
            with pytest.warns(UndefinedMetricWarning, match="No positive samples"):
                curve = M.roc_curve(probs[:, c], labels == c)
        assert_same(curve, EXPECTED[f"roc_curve/{key}/{c}"], f"{key} roc {c}")
        assert_same(M.pr_auc(probs[:, c], labels == c), EXPECTED[f"pr_auc/{key}/{c}"], f"{key} ap {c}")


@pytest.mark.parametrize("key,names,task", [("grade", G5, "grade"), ("grade_sparse", G5, "grade"),
                                            ("referable", C2, "referable")])
def test_grading_functions(key, names, task):
    probs, labels = _data(key)
    for ts in (0.8, 0.9, 0.95):
        rep = M.grading_report(probs, labels, names, task=task, target_specificity=ts, threshold=0.4)
        assert_same(rep, EXPECTED[f"grading_report/{key}/{ts}"], f"{key} {ts}")
        assert_same(flatten_grading_report(rep, "val_"), EXPECTED[f"flatten_grading_report/{key}/{ts}"], key)
    scores, pos = referable_scores(probs, task), labels >= (1 if task == "referable" else 2)
    for ts in (0.5, 0.9, 1.0):
        assert_same(M.threshold_for_specificity(scores, pos, ts), EXPECTED[f"threshold_for_specificity/{key}/{ts}"])
    assert_same(M.sensitivity_specificity(scores, pos, 0.3), EXPECTED[f"sensitivity_specificity/{key}"])


def test_multilabel_kappa_and_empty_epochs():
    probs, labels = _data("multilabel")
    rep = M.multilabel_report(probs, labels, ML, threshold=[0.5, 0.6, 0.5, 0.4])
    assert_same(rep, EXPECTED["multilabel_report"])
    assert_same(M.flatten_multilabel_report(rep, "val_"), EXPECTED["flatten_multilabel_report"])
    for i, k in enumerate(INPUTS["kappa"]):
        assert_same(M.quadratic_weighted_kappa(k["labels"], k["preds"], 5), EXPECTED[f"kappa/{i}"])
    assert_same(M.quadratic_weighted_kappa([3, 3, 3], [3, 3, 3], 5), EXPECTED["kappa/constant"])
    probs, labels = _data("grade_sparse")  # grades 1 and 3 absent: they keep their place on the scale
    assert_same(M.quadratic_weighted_kappa(labels, probs.argmax(1), 5), EXPECTED["kappa/sparse"])
    assert_same(M.classification_report(np.zeros((0, 3)), np.zeros(0), C3), EXPECTED["classification_report/empty"])
    assert_same(M.multilabel_report(np.zeros((0, 4)), np.zeros((0, 4)), ML), EXPECTED["multilabel_report/empty"])
    assert_same(M.grading_report(np.zeros((0, 2)), np.zeros(0), C2, task="referable"),
                EXPECTED["grading_report/empty"])


def _run(metrics: dict, probs, labels, batch_size=16) -> dict:
    """An evaluator-like engine: decollated batches, predictions as MetaTensors, ``from_engine``-style output."""
    batches = [{"pred": [MetaTensor(torch.as_tensor(p, dtype=torch.float32)) for p in probs[i:i + batch_size]],
                "label": [torch.as_tensor(y) for y in labels[i:i + batch_size]]}
               for i in range(0, len(probs), batch_size)]
    engine = Engine(lambda e, b: (b["pred"], b["label"]))
    for name, m in metrics.items():
        m.attach(engine, name)
    return dict(engine.run(batches).metrics)


@pytest.mark.parametrize("key,names", [("mc3", C3), ("bin_ties", C2), ("mc4_missing", C4)])
def test_classification_metrics_on_an_engine(key, names):
    got = _run({"val_accuracy": M.ClassificationMetrics(names, key="accuracy"),
                "val_auc": M.ClassificationMetrics(names, key="macro_auc"),
                "val": M.ClassificationMetrics(names, prefix="val_")}, *map(INPUTS[key].get, ("probs", "labels")))
    assert_same(got, EXPECTED[f"ClassificationMetrics/{key}"], key)


@pytest.mark.parametrize("key,names,task", [("grade", G5, "grade"), ("referable", C2, "referable")])
def test_grading_metrics_on_an_engine(key, names, task):
    got = _run({"val_key": M.GradingMetrics(names, task=task, key="kappa" if task == "grade" else "auc"),
                "val": M.GradingMetrics(names, task=task, prefix="val_", target_specificity=0.9)},
               *map(INPUTS[key].get, ("probs", "labels")))
    assert_same(got, EXPECTED[f"GradingMetrics/{key}"], key)


def test_multilabel_auroc_on_an_engine():
    got = _run({"val_mean_auroc": M.MultiLabelAUROC(ML), "val": M.MultiLabelAUROC(ML, key=None, prefix="val_")},
               INPUTS["multilabel"]["probs"], INPUTS["multilabel"]["labels"])
    assert_same(got, EXPECTED["MultiLabelAUROC"])
    assert math.isnan(got["val_C_auroc"]) and math.isnan(got["val_D_auroc"])  # no positives / no negatives
