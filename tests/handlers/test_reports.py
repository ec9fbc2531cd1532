"""ClassificationReportWriter and PredictionWriter on a tiny evaluator engine with planted predictions."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from medplugin.handlers import ClassificationReportWriter, PredictionWriter
from tests.handlers._evaluator import evaluator, sample

CLASSES = ["normal", "bacterial", "viral"]
LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 0, 1]
PROBS = np.array([
    [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.5, 0.2],
    [0.2, 0.2, 0.6], [0.1, 0.3, 0.6], [0.4, 0.1, 0.5], [0.5, 0.25, 0.25], [0.05, 0.9, 0.05],
])


def _samples():
    return [sample(f"/data/img_{i:02d}.png", lab) for i, lab in enumerate(LABELS)]


def test_metrics_json_equals_scikit_learn_and_plots_are_written(tmp_path):
    engine, batches = evaluator(_samples(), PROBS, batch_size=3)
    writer = ClassificationReportWriter(str(tmp_path), CLASSES)
    writer.attach(engine)
    engine.run(batches, max_epochs=1)

    report = json.loads((tmp_path / "metrics.json").read_text())
    y, pred = np.asarray(LABELS), PROBS.argmax(1)
    assert report["n"] == 10
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report["misclassification_rate"] == pytest.approx(1 - skm.accuracy_score(y, pred))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    aucs = [skm.roc_auc_score(y == c, PROBS[:, c]) for c in range(3)]
    assert report["macro_auc"] == pytest.approx(np.mean(aucs))
    assert report["macro_auc"] == pytest.approx(skm.roc_auc_score(y, PROBS, multi_class="ovr", average="macro"))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    cm = skm.confusion_matrix(y, pred)
    for c, name in enumerate(CLASSES):
        got = report["per_class"][name]
        tn = cm.sum() - cm[c].sum() - cm[:, c].sum() + cm[c, c]
        assert got["auc"] == pytest.approx(aucs[c])
        assert got["precision"] == pytest.approx(precision[c]) and got["f1"] == pytest.approx(f1[c])
        assert got["sensitivity"] == got["recall"] == pytest.approx(recall[c])
        assert got["specificity"] == pytest.approx(tn / (cm.sum() - cm[c].sum()))
        assert got["support"] == support[c]
    w = skm.precision_recall_fscore_support(y, pred, average="weighted", zero_division=0)
    assert [report["weighted_avg"][k] for k in ("precision", "recall", "f1")] == pytest.approx(list(w[:3]))
    wrong = [i for i in range(10) if y[i] != pred[i]]
    assert report["misclassified"] == [
        {"file": f"/data/img_{i:02d}.png", "true": CLASSES[y[i]], "pred": CLASSES[pred[i]]} for i in wrong]
    assert engine.state.metrics["accuracy"] == pytest.approx(report["accuracy"])
    assert engine.state.metrics["macro_auc"] == pytest.approx(report["macro_auc"])
    for png in ("confusion_matrix.png", "roc.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_a_second_evaluation_starts_afresh(tmp_path):
    engine, batches = evaluator(_samples(), PROBS, batch_size=4)
    ClassificationReportWriter(str(tmp_path), CLASSES).attach(engine)
    engine.run(batches, max_epochs=1)
    first = (tmp_path / "metrics.json").read_text()
    engine.run(batches, max_epochs=1)  # e.g. the next validation round
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 10
    assert (tmp_path / "metrics.json").read_text() == first


def test_predictions_csv_one_row_per_image_with_errors(tmp_path):
    samples = _samples()[:4]
    samples[2] = sample("/data/broken.dcm", 0, error="/data/broken.dcm: truncated or corrupt DICOM file")
    engine, batches = evaluator(samples, PROBS[:4], batch_size=3)
    PredictionWriter(str(tmp_path), CLASSES).attach(engine)
    engine.run(batches, max_epochs=1)
    engine.run(batches, max_epochs=1)  # rows are collected afresh each run

    raw = (tmp_path / "predictions.csv").read_bytes()
    assert raw.count(b"\r\n") == 5  # the csv module's line ends: header and four rows
    rows = list(csv.reader(raw.decode().splitlines()))
    assert rows[0] == ["file", "prediction", "prob_normal", "prob_bacterial", "prob_viral", "error"]
    assert rows[1] == ["/data/img_00.png", "normal", "0.800000", "0.100000", "0.100000", ""]
    assert rows[2] == ["/data/img_01.png", "normal", "0.600000", "0.300000", "0.100000", ""]
    assert rows[3] == ["/data/broken.dcm", "", "", "", "", "/data/broken.dcm: truncated or corrupt DICOM file"]
    assert rows[4][:2] == ["/data/img_03.png", "bacterial"]
    assert [float(v) for v in rows[4][2:5]] == pytest.approx(PROBS[3].tolist())
