"""Multi-label AUROC: the functional report and the ignite metric agree with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import roc_auc_score

from medplugin.metrics import MultiLabelAUROC, multilabel_report

NAMES = ["A", "B", "C"]


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 3)) < 0.3).astype(float)
    labels[:, 2] = 0  # C: no positives -> AUROC undefined
    probs = np.clip(0.6 * labels + rng.random((n, 3)) * 0.7, 0, 1)
    return probs, labels


def test_report_matches_sklearn_and_skips_undefined_labels():
    probs, labels = _data()
    rep = multilabel_report(probs, labels, NAMES, threshold=[0.5, 0.6, 0.5])
    for j, name in enumerate(NAMES[:2]):
        assert rep["per_label"][name]["auroc"] == pytest.approx(roc_auc_score(labels[:, j], probs[:, j]))
        assert rep["per_label"][name]["positives"] == int(labels[:, j].sum())
    assert math.isnan(rep["per_label"]["C"]["auroc"])
    assert rep["n_auroc_defined"] == 2
    assert rep["mean_auroc"] == pytest.approx(np.mean([roc_auc_score(labels[:, j], probs[:, j]) for j in range(2)]))
    called = probs[:, 1] >= 0.6
    pos = labels[:, 1] == 1
    assert rep["per_label"]["B"]["sensitivity"] == pytest.approx((called & pos).sum() / pos.sum())
    assert rep["per_label"]["B"]["specificity"] == pytest.approx((~called & ~pos).sum() / (~pos).sum())


def test_report_argument_checks():
    probs, labels = _data()
    with pytest.raises(ValueError, match=r"probs must be \(N, 3\)"):
        multilabel_report(probs[:, :2], labels, NAMES)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        multilabel_report(probs, labels * 2, NAMES)
    with pytest.raises(ValueError, match="threshold must be"):
        multilabel_report(probs, labels, NAMES, threshold=[0.5, 0.5])


def test_ignite_metric_accumulates_batches_and_flat_dict():
    probs, labels = _data(64, seed=1)
    batches = [(torch.tensor(probs[i:i + 16]), torch.tensor(labels[i:i + 16])) for i in range(0, 64, 16)]
    # decollated (list of per-sample tensors), as MONAI's from_engine gives them
    decollated = [([p for p in pb], [lab for lab in lb]) for pb, lb in batches]
    engine = Engine(lambda e, b: b)
    MultiLabelAUROC(NAMES).attach(engine, "val_mean_auroc")
    MultiLabelAUROC(NAMES, key=None, prefix="val_").attach(engine, "val")
    state = engine.run(decollated, max_epochs=1)
    expected = multilabel_report(probs, labels, NAMES)
    assert state.metrics["val_mean_auroc"] == pytest.approx(expected["mean_auroc"])
    assert state.metrics["val_A_auroc"] == pytest.approx(expected["per_label"]["A"]["auroc"])
    assert math.isnan(state.metrics["val_C_auroc"])


def test_ignite_metric_rejects_wrong_width():
    m = MultiLabelAUROC(NAMES)
    with pytest.raises(ValueError, match=r"expected \(batch, 3\)"):
        m.update((torch.zeros(2, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="key must be"):
        MultiLabelAUROC(NAMES, key="accuracy")


def test_metatensor_batches_and_decollated_metatensors_agree_with_sklearn():
    """As the evaluator hands them over: (B, L) MetaTensor batches, or lists of per-sample MetaTensors."""
    from monai.data import MetaTensor

    probs, labels = _data(48, seed=2)
    expected = np.mean([roc_auc_score(labels[:, j], probs[:, j].astype(np.float32)) for j in range(2)])
    for decollate in (False, True):
        m = MultiLabelAUROC(NAMES)
        engine = Engine(lambda e, b: b)
        m.attach(engine, "val_mean_auroc")
        batches = []
        for i in range(0, 48, 12):
            pb, lb = MetaTensor(torch.tensor(probs[i:i + 12])), MetaTensor(torch.tensor(labels[i:i + 12]))
            batches.append((list(pb), list(lb)) if decollate else (pb, lb))
        assert engine.run(batches).metrics["val_mean_auroc"] == pytest.approx(expected, abs=1e-12)
