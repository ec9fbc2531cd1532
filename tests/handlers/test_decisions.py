"""Issue 15 wired into the handlers, on tiny ignite engines: operating points and temperature chosen on validation
and stored in model.json, applied (never re-chosen) at evaluation, intervals, reliability, predictions.csv."""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image

from medplugin.compare import prediction_header, read_run
from medplugin.handlers import (
    BestModelSaver,
    ClassificationReportWriter,
    GradingReportWriter,
    MultiLabelPredictionWriter,
    MultiLabelReportWriter,
    PredictionWriter,
    SegmentationReportWriter,
    ValidationStatistics,
)
from medplugin.metrics import apply_temperature, choose_operating_points, fit_model_statistics, write_reliability
from medplugin.metrics.operating_points import choose_threshold
from medplugin.metrics.stored import add_calls, stored_operating_points, stored_thresholds
from medplugin.transforms import Temperature, Temperatured
from tests.handlers._evaluator import evaluator, sample

CLASSES = ["normal", "bacterial", "viral"]
FINDINGS = ["Atelectasis", "Cardiomegaly"]


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _validator(items: list[dict], metric: float = 0.9, batch_size: int = 4) -> tuple[Engine, list]:
    """A validation engine giving ``items`` (dicts with pred, logits, label, patient_id) as its decollated outputs."""
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]

    def step(engine, batch):
        return [{k: v for k, v in it.items() if k in ("pred", "logits", "label")} for it in batch]

    engine = Engine(step)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        e.state.metrics["val_auc"] = metric

    return engine, batches


def _multiclass_validation(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    logits = rng.normal(0, 1, (n, 3)) + 1.5 * np.eye(3)[labels]
    return logits, labels


def test_best_model_saver_stores_the_temperature_and_points_fitted_on_validation(tmp_path):
    logits, labels = _multiclass_validation()
    items = [{"pred": torch.as_tensor(p), "logits": torch.as_tensor(z), "label": torch.tensor([y])}
             for p, z, y in zip(_softmax(logits), logits, labels)]
    engine, batches = _validator(items)
    net = torch.nn.Linear(2, 3)
    saver = BestModelSaver(net, str(tmp_path), "val_auc", {"class_names": CLASSES},
                           statistics=ValidationStatistics(CLASSES, "softmax", "sensitivity:0.9"))
    saver.attach(engine)
    engine.run(batches, max_epochs=1)

    meta = json.loads((tmp_path / "model.json").read_text())
    want = fit_model_statistics(logits, labels, CLASSES, "softmax", "sensitivity:0.9")
    assert meta["temperature"] == want["temperature"] and 0.05 < meta["temperature"] < 20
    assert meta["operating_points"] == want["operating_points"] and set(meta["operating_points"]) == set(CLASSES)
    for c in CLASSES:
        assert meta["operating_points"][c]["criterion"] == "sensitivity:0.9"
        assert meta["operating_points"][c]["sensitivity"] >= 0.9
    assert meta["validation_calibration"]["nll_after"] <= meta["validation_calibration"]["nll_before"] + 1e-9
    # a second validation run (the next epoch) starts its collection afresh: the same points again
    engine.run(batches, max_epochs=1)
    again = json.loads((tmp_path / "model.json").read_text())
    assert again["operating_points"] == meta["operating_points"]


def test_validation_statistics_from_probabilities_alone_and_a_referable_group(tmp_path):
    """Without logits the probabilities are turned back into logits (the same temperature within rounding); a
    group's point (e.g. referable DR, grades 2-4) is chosen on the summed temperature-scaled probabilities."""
    rng = np.random.default_rng(1)
    labels = np.arange(50) % 5
    logits = rng.normal(0, 1, (50, 5)) + 2.0 * np.eye(5)[labels]
    probs = _softmax(logits)
    stats = ValidationStatistics([f"g{i}" for i in range(5)], "softmax", "youden", groups={"referable DR": [2, 3, 4]},
                                 logits_key=None)
    engine, batches = _validator([{"pred": torch.as_tensor(p), "label": torch.tensor(y)}
                                  for p, y in zip(probs, labels)])
    stats.attach(engine)
    engine.run(batches, max_epochs=1)
    got = stats.fit(engine)
    want = fit_model_statistics(logits, labels, [f"g{i}" for i in range(5)])
    assert got["temperature"] == pytest.approx(want["temperature"], rel=1e-4)
    scaled = apply_temperature(logits, got["temperature"])
    ref = choose_threshold(scaled[:, 2:].sum(1), labels >= 2, "youden")
    assert got["operating_points"]["referable DR"]["threshold"] == pytest.approx(ref["threshold"], rel=1e-4)
    assert got["operating_points"]["referable DR"]["classes"] == ["g2", "g3", "g4"]
    with pytest.raises(ValueError, match=r"operating_point must be 'youden', .* got 'f1'"):
        ValidationStatistics(CLASSES, "softmax", "f1")
    with pytest.raises(ValueError, match=r"group 'x' must list class indices in 0..2, got \[3\]"):
        ValidationStatistics(CLASSES, "softmax", groups={"x": [3]})


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_planted_shift_test_sensitivity_is_measured_at_the_validation_threshold(tmp_path):
    """Validation and test differ (the test scanner gives lower scores to positives): the evaluation reports the
    sensitivity at the threshold chosen on validation and stored in model.json, not one re-chosen on the test set."""
    rng = np.random.default_rng(7)
    # validation: positives around +2, negatives around -2 (logits), both findings
    yv = (rng.random((400, 2)) < 0.5).astype(int)
    zv = np.where(yv == 1, 2.0, -2.0) + rng.normal(0, 1, yv.shape)
    items = [{"pred": torch.as_tensor(_sigmoid(z)), "logits": torch.as_tensor(z), "label": torch.as_tensor(y)}
             for z, y in zip(zv, yv)]
    engine, batches = _validator(items, batch_size=50)
    BestModelSaver(torch.nn.Linear(2, 2), str(tmp_path / "model"), "val_auc", {"class_names": FINDINGS},
                   statistics=ValidationStatistics(FINDINGS, "sigmoid", "youden")).attach(engine)
    engine.run(batches, max_epochs=1)
    model_json = tmp_path / "model" / "model.json"
    meta = json.loads(model_json.read_text())
    thresholds = [meta["operating_points"][f]["threshold"] for f in FINDINGS]

    # test: prevalence 20% and positives shifted down to +0.5
    yt = (rng.random((300, 2)) < 0.2).astype(int)
    zt = np.where(yt == 1, 0.5, -2.0) + rng.normal(0, 1, yt.shape)
    scale = Temperature(model_json)  # what the bundles' evaluation post-processing does before the sigmoid
    samples = [sample(f"/t/{i:03d}.png", y.tolist(), patient_id=f"p{i // 2}") for i, y in enumerate(yt)]
    test_engine, test_batches = evaluator(samples, [torch.sigmoid(scale(torch.as_tensor(z))).numpy() for z in zt],
                                          batch_size=32)
    MultiLabelReportWriter(str(tmp_path / "eval"), FINDINGS, threshold=None, model_json=str(model_json),
                           bootstrap=200, predictions="predictions.csv").attach(test_engine)
    test_engine.run(test_batches, max_epochs=1)
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())

    pt = apply_temperature(zt, meta["temperature"], "sigmoid")
    rechosen = choose_operating_points(pt, yt, FINDINGS, "youden")
    for j, f in enumerate(FINDINGS):
        pos = yt[:, j] == 1
        at_validation = float((pt[pos, j] >= thresholds[j]).mean())
        assert m["operating_points"][f]["threshold"] == thresholds[j] == m["per_finding"][f]["threshold"]
        assert m["operating_points"][f]["sensitivity"] == pytest.approx(at_validation)
        assert m["per_finding"][f]["sensitivity"] == pytest.approx(at_validation)
        # the shift shows: a point re-chosen on the test set would report a clearly higher sensitivity
        assert rechosen[f]["threshold"] < thresholds[j]
        assert rechosen[f]["sensitivity"] > at_validation + 0.15
        assert at_validation < 0.8  # ~0.5 of the shifted positives reach the validation threshold
        lo, hi = m["operating_points"][f]["sensitivity_ci95"]
        assert lo <= at_validation <= hi


def _run_writer(writer, samples, preds, batch_size=4):
    engine, batches = evaluator(samples, preds, batch_size=batch_size)
    writer.attach(engine)
    engine.run(batches, max_epochs=1)
    return engine


def _check_intervals(report, path=""):
    """Every ``K_ci95`` in a metrics.json has ``K`` beside it with low <= K <= high; returns how many there are."""
    n = 0
    if isinstance(report, dict):
        for k, v in report.items():
            if k.endswith("_ci95"):
                value = report[k[:-5]]
                lo, hi = v
                assert lo <= value + 1e-12 and value <= hi + 1e-12, (path, k, value, v)
                n += 1
            elif isinstance(v, dict):
                n += _check_intervals(v, f"{path}/{k}")
    return n


def _model_json(path, temperature, points):
    path.write_text(json.dumps({"class_names": list(points), "temperature": temperature,
                                "operating_points": {c: {"threshold": t, "criterion": "youden"}
                                                     for c, t in points.items()}}))
    return str(path)


def test_classification_report_applies_stored_points_with_intervals_reliability_and_predictions(tmp_path):
    rng = np.random.default_rng(3)
    labels = np.arange(40) % 3
    logits = rng.normal(0, 1, (40, 3)) + 1.5 * np.eye(3)[labels]
    t = 1.7
    probs = _softmax(logits / t)
    mj = _model_json(tmp_path / "model.json", t, {"normal": 0.4, "bacterial": 0.3, "viral": 0.35})
    samples = [sample(f"/d/{i:02d}.png", int(y), patient_id=f"P{i // 4}") for i, y in enumerate(labels)]
    engine, batches = evaluator(samples, probs, batch_size=8)

    def with_logits(e):  # the bundles copy the raw logits before their temperature step
        for o, z in zip(e.state.output, logits[(e.state.iteration - 1) * 8:]):
            o["logits"] = torch.as_tensor(z)

    engine.add_event_handler(Events.ITERATION_COMPLETED, with_logits)
    out = tmp_path / "eval"
    ClassificationReportWriter(str(out), CLASSES, model_json=mj, bootstrap=300, seed=2,
                               predictions="predictions.csv").attach(engine)
    engine.run(batches, max_epochs=1)
    m = json.loads((out / "metrics.json").read_text())

    assert m["kind"] == "multiclass" and m["bootstrap"]["resampling_unit"] == "patient"
    assert m["bootstrap"]["n_patients"] == 10 and m["bootstrap"]["n_resamples"] == 300
    assert _check_intervals(m) >= 1 + 1 + 3 + 3 * 4  # accuracy, macro AUC, 3 AUCs, 4 rates x 3 classes
    for c, thr in zip(CLASSES, (0.4, 0.3, 0.35)):
        pos, called = labels == CLASSES.index(c), probs[:, CLASSES.index(c)] >= thr
        op = m["operating_points"][c]
        assert op["threshold"] == thr and op["criterion"] == "youden"
        assert op["sensitivity"] == pytest.approx((called & pos).sum() / pos.sum())
        assert op["ppv"] == pytest.approx((called & pos).sum() / called.sum())
        assert op["specificity"] == pytest.approx((~called & ~pos).sum() / (~pos).sum())
        assert op["npv"] == pytest.approx((~called & ~pos).sum() / (~called).sum())
    want = write_reliability(logits, labels, t, "softmax", tmp_path / "r.png", CLASSES)
    assert m["calibration"]["temperature"] == t
    assert m["calibration"]["ece_before"] == pytest.approx(want["ece_before"])
    assert m["calibration"]["ece_after"] == pytest.approx(want["ece_after"])
    with Image.open(out / "reliability.png") as im:
        assert im.format == "PNG"
    md = (out / "metrics.md").read_text()
    assert re.search(r"\| accuracy \| \d\.\d{3} \(\d\.\d{3}-\d\.\d{3}\) \|", md)
    assert "| bacterial | youden | 0.3 |" in md
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert list(rows[0]) == prediction_header(CLASSES)
    for i, r in enumerate(rows):
        assert r["patient_id"] == f"P{i // 4}" and r["prediction"] == CLASSES[probs[i].argmax()]
        assert [float(r[f"prob_{c}"]) for c in CLASSES] == pytest.approx(probs[i], abs=1e-6)
        assert [int(r[f"true_{c}"]) for c in CLASSES] == np.eye(3, dtype=int)[labels[i]].tolist()
        assert [int(r[f"call_{c}"]) for c in CLASSES] == (probs[i] >= [0.4, 0.3, 0.35]).astype(int).tolist()
    run = read_run(out)  # what `medplugin compare` reads
    assert run.kind == "multiclass" and run.calls is not None and run.patient_ids[:4] == ["P0"] * 4


def test_report_writers_keep_their_old_outputs_unless_configured(tmp_path):
    engine = _run_writer(ClassificationReportWriter(str(tmp_path), CLASSES),
                         [sample(f"/d/{i}.png", i % 3) for i in range(6)], _softmax(np.eye(3)[np.arange(6) % 3]))
    assert sorted(os.listdir(tmp_path)) == ["confusion_matrix.png", "metrics.json", "roc.png"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert not [k for k in m if k.endswith("_ci95")] and "operating_points" not in m and "kind" not in m
    assert engine.state.metrics["accuracy"] == 1.0


def test_grading_report_takes_referable_dr_at_the_validation_point_not_one_chosen_on_the_test_images(tmp_path):
    rng = np.random.default_rng(5)
    labels = np.array([0, 1, 2, 3, 4] * 6)
    probs = _softmax(rng.normal(0, 1, (30, 5)) + 1.5 * np.eye(5)[labels])
    names = ["no DR", "mild", "moderate", "severe", "proliferative"]
    mj = tmp_path / "model.json"
    points = {n: {"threshold": 0.3, "criterion": "youden"} for n in names}
    points["referable DR"] = {"threshold": 0.42, "criterion": "youden", "classes": names[2:]}
    mj.write_text(json.dumps({"temperature": 1.0, "operating_points": points}))
    out = tmp_path / "eval"
    _run_writer(GradingReportWriter(str(out), names, task="grade", target_specificity=None, threshold=None,
                                    model_json=str(mj), bootstrap=200, predictions="predictions.csv"),
                [sample(f"/f/{i}.jpeg", int(y), patient_id=str(i // 2)) for i, y in enumerate(labels)], probs)
    m = json.loads((out / "metrics.json").read_text())
    scores, positives = probs[:, 2:].sum(1), labels >= 2
    assert m["threshold"] == 0.42 and m["threshold_chosen_on"] == "validation (model.json)"
    assert m["sensitivity"] == pytest.approx((scores[positives] >= 0.42).mean())
    assert m["specificity"] == pytest.approx((scores[~positives] < 0.42).mean())
    assert not {"operating_threshold", "operating_sensitivity", "target_specificity"} & set(m)
    ref = m["operating_points"]["referable DR"]
    assert ref["sensitivity"] == pytest.approx(m["sensitivity"]) and ref["sensitivity_ci95"] == m["sensitivity_ci95"]
    assert {"auc_ci95", "kappa_ci95", "accuracy_ci95"} <= set(m) and _check_intervals(m) >= 10
    assert "| referable DR AUROC |" in (out / "metrics.md").read_text()
    with pytest.raises(ValueError, match="threshold=None takes referable DR's operating point from model_json"):
        GradingReportWriter(str(out), names, task="grade", threshold=None)


def test_prediction_writers_add_a_call_per_class_at_the_stored_points(tmp_path):
    mj = _model_json(tmp_path / "model.json", 1.0, {"normal": 0.5, "bacterial": 0.2, "viral": 0.9})
    probs = np.array([[0.6, 0.25, 0.15], [0.1, 0.15, 0.75]])
    _run_writer(PredictionWriter(str(tmp_path / "a"), CLASSES, model_json=mj), [sample("/x/0.png", 0),
                                                                                sample("/x/1.png", 2)], probs)
    rows = list(csv.reader((tmp_path / "a" / "predictions.csv").read_text().splitlines()))
    assert rows[0] == ["file", "prediction", "prob_normal", "prob_bacterial", "prob_viral", "call_normal",
                       "call_bacterial", "call_viral", "error"]
    assert rows[1][1] == "normal" and rows[1][5:8] == ["1", "1", "0"]
    assert rows[2][1] == "viral" and rows[2][5:8] == ["0", "0", "0"]  # the argmax stays; viral's point is 0.9
    mj2 = _model_json(tmp_path / "m2.json", [1.0, 1.0], {"Atelectasis": 0.3, "Cardiomegaly": 0.8})
    bad = sample("/x/bad.png", [0, 0], error="/x/bad.png: truncated")
    _run_writer(MultiLabelPredictionWriter(str(tmp_path / "b"), FINDINGS, threshold=None, model_json=mj2),
                [sample("/x/0.png", [0, 0]), bad], np.array([[0.35, 0.7], [0, 0]]))
    rows = list(csv.reader((tmp_path / "b" / "predictions.csv").read_text().splitlines()))
    assert rows[1] == ["/x/0.png", "Atelectasis", "0.350000", "0.700000", "1", "0", ""]
    assert rows[2] == ["/x/bad.png", "", "", "", "", "", "/x/bad.png: truncated"]
    with pytest.raises(ValueError, match="calls=True needs model_json"):
        PredictionWriter(str(tmp_path), CLASSES, calls=True)


def test_stored_points_fall_back_loudly_and_answers_get_calls(tmp_path, caplog):
    mj = _model_json(tmp_path / "model.json", 1.3, {"normal": 0.4, "bacterial": 0.3, "viral": 0.2})
    assert stored_thresholds(mj, CLASSES) == [0.4, 0.3, 0.2]
    assert stored_thresholds(mj, CLASSES, 0.7) == [0.7] * 3
    assert stored_operating_points(mj, CLASSES, [0.1, 0.2, 0.3])["viral"] == {"threshold": 0.3,
                                                                             "criterion": "fixed threshold"}
    with caplog.at_level("WARNING"):
        assert stored_thresholds(tmp_path / "missing.json", CLASSES) == [0.5] * 3
    assert "stores no operating point for any class: called at 0.5" in caplog.text
    answer = [{"idx": 0, "label": "normal", "score": 0.41}, {"idx": 2, "label": "viral", "score": 0.1}]
    got = add_calls(answer, json.loads(open(mj).read()) | {"class_names": CLASSES})
    assert got == [{**answer[0], "threshold": 0.4, "call": 1}, {**answer[1], "threshold": 0.2, "call": 0}]
    with pytest.raises(ValueError, match="names output 5, but the model has 3 classes"):
        add_calls([{"idx": 5, "label": "x", "score": 0.2}], mj, CLASSES)


def test_temperature_transform_reads_model_json_and_follows_its_changes(tmp_path):
    mj = tmp_path / "model.json"
    z = torch.tensor([2.0, -1.0, 0.5])
    scale = Temperatured("pred", model_json=mj)
    assert torch.equal(scale({"pred": z})["pred"], z)  # no model.json yet: unchanged
    mj.write_text(json.dumps({"temperature": 2.0}))
    assert torch.allclose(scale({"pred": z})["pred"], z / 2)
    mj.write_text(json.dumps({"temperature": [1.0, 2.0, 4.0], "pad": "x" * 10}))  # per finding (sigmoid)
    assert torch.allclose(scale({"pred": z})["pred"], z / torch.tensor([1.0, 2.0, 4.0]))
    with pytest.raises(ValueError, match=r"3 temperatures .* but the logits have shape \(2,\)"):
        scale({"pred": torch.zeros(2)})
    mj.write_text(json.dumps({"temperature": -1}))
    with pytest.raises(Exception, match="temperature must be a positive number"):
        Temperature(mj)(z)
    with pytest.raises(ValueError, match="needs model_json"):
        Temperature()


def test_segmentation_report_gives_the_mean_dice_a_patient_level_interval(tmp_path):
    preds, samples = [], []
    rng = np.random.default_rng(0)
    for i in range(12):
        truth = np.zeros((1, 16, 16))
        truth[0, 4:12, 4:12] = 1
        pred = np.zeros((1, 16, 16))
        k = int(rng.integers(0, 5))
        pred[0, 4 + k:12, 4:12] = 1
        preds.append(pred)
        samples.append(sample(f"/s/{i}.png", truth, patient_id=f"p{i // 3}"))
    engine, batches = evaluator(samples, preds, batch_size=4)
    SegmentationReportWriter(str(tmp_path), bootstrap=300).attach(engine)
    engine.run(batches, max_epochs=1)
    m = json.loads((tmp_path / "metrics.json").read_text())
    lo, hi = m["mean_dice_ci95"]
    assert lo < m["mean_dice"] < hi and m["bootstrap"]["resampling_unit"] == "patient"
    assert m["bootstrap"]["n_patients"] == 4 and m["per_image"][0]["patient_id"] == "p0"


@pytest.mark.parametrize("tolerance, hit", [(7.0, False), (8.0, True)])
def test_pointing_game_tolerance_is_in_film_pixels_with_the_centre_guess_beside(tmp_path, tolerance, hit):
    """The map of a 32 x 32 input peaks at (24, 12), i.e. (48, 24) on the 64 x 64 film: 8 film pixels (4 input
    pixels) right of the box; the tolerance counts film pixels. The film's centre is scored the same way."""
    from monai.data import MetaTensor

    from medplugin.handlers import LocalizationEvaluator
    from medplugin.inferers import GradCAMInferer
    from tests.handlers.test_multilabel import _CamIsTheImage

    x = torch.zeros(1, 32, 32)
    x[0, 8:16, 20:28] = 1.0
    path = str(tmp_path / "00000000_000.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000000_000.png,Cardiomegaly,20,10,20,20\n")
    inferer, net = GradCAMInferer("features"), _CamIsTheImage(2)

    def step(engine, batch):
        xs = torch.stack([b["image"].as_tensor() for b in batch])
        return [{"pred": p, "label": b["label"], "image": b["image"]} for p, b in zip(torch.sigmoid(inferer(xs, net)),
                                                                                     batch)]

    engine = Engine(step)
    loc = LocalizationEvaluator(inferer, str(bbox), str(tmp_path), FINDINGS, tolerance=tolerance)
    loc.attach(engine)
    engine.run([[{"image": MetaTensor(x, meta={"filename_or_obj": path}), "label": torch.zeros(2), "path": path}]],
               max_epochs=1)
    out = json.loads((tmp_path / "localization.json").read_text())
    (box,) = out["boxes"]
    assert box["peak"] == [48.0, 24.0] and box["hit"] is hit and out["hit_rate"] == float(hit)
    assert box["centre_hit"] is True and out["centre_hit_rate"] == 1.0  # (32, 32) within 7 px of the box
    assert out["tolerance"] == tolerance and box["box_in_model"] == [10.0, 5.0, 10.0, 10.0]
    assert set(out["iobb_accuracy"]) == {"0.1", "0.25", "0.5", "0.75", "0.9"}
    md = (tmp_path / "localization.md").read_text()
    assert "centre_guess_hit_rate" in md and "acc_iobb>0.25" in md and f"tolerance of {tolerance:g} pixels" in md
    rows = list(csv.DictReader((tmp_path / "localization.csv").open()))
    assert [r["finding"] for r in rows] == ["Cardiomegaly", "all"] and rows[0]["pointing_game_hit_rate"] == (
        "1.000" if hit else "0.000")
