"""MultiLabelReportWriter, MultiLabelPredictionWriter and LocalizationEvaluator on tiny ignite engines."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from PIL import Image
from sklearn.metrics import roc_auc_score

from medplugin.handlers import LocalizationEvaluator, MultiLabelPredictionWriter, MultiLabelReportWriter
from medplugin.inferers import GradCAMInferer
from tests.handlers._evaluator import evaluator, sample

FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion"]
LABELS = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
PROBS = np.array([[0.9, 0.2, 0.1], [0.3, 0.7, 0.2], [0.6, 0.4, 0.7], [0.2, 0.1, 0.05],
                  [0.4, 0.3, 0.3], [0.5, 0.8, 0.1], [0.45, 0.35, 0.2], [0.7, 0.6, 0.4]])


def _samples():
    return [sample(f"/cxr/{i:08d}_000.png", lab) for i, lab in enumerate(LABELS.tolist())]


def test_metrics_json_and_tables_equal_scikit_learn(tmp_path):
    engine, batches = evaluator(_samples(), PROBS, batch_size=3)
    MultiLabelReportWriter(str(tmp_path), FINDINGS, threshold=[0.5, 0.5, 0.3]).attach(engine)
    engine.run(batches, max_epochs=1)

    report = json.loads((tmp_path / "metrics.json").read_text())
    aucs = [roc_auc_score(LABELS[:, j], PROBS[:, j]) for j in range(2)]  # Effusion has no positive: undefined
    assert report["n"] == 8 and report["n_auroc_defined"] == 2
    assert report["mean_auroc"] == pytest.approx(np.mean(aucs)) == engine.state.metrics["mean_auroc"]
    for j, (name, t) in enumerate(zip(FINDINGS, [0.5, 0.5, 0.3])):
        got, pos, called = report["per_finding"][name], LABELS[:, j] == 1, PROBS[:, j] >= t
        assert got["positives"] == pos.sum() and got["prevalence"] == pytest.approx(pos.mean())
        assert got["threshold"] == t
        assert got["specificity"] == pytest.approx((~called & ~pos).sum() / (~pos).sum())
        if pos.any():
            assert got["auroc"] == pytest.approx(aucs[j])
            assert got["sensitivity"] == pytest.approx((called & pos).sum() / pos.sum())
        else:
            assert math.isnan(got["auroc"])  # undefined, written as NaN
    rows = list(csv.reader((tmp_path / "auroc.csv").read_text().splitlines()))
    assert rows[0] == ["finding", "auroc", "positives", "prevalence", "sensitivity", "specificity", "threshold"]
    assert rows[1][:3] == ["Atelectasis", f"{aucs[0]:.4f}", "4"] and rows[3][1] == "n/a"
    assert rows[4] == ["mean", f"{np.mean(aucs):.4f}", "", "", "", "", ""]
    md = (tmp_path / "auroc.md").read_text().splitlines()
    assert md[0].startswith("AUROC per finding on 8 images (mean over the 2 findings")
    assert md[4] == "| Atelectasis | " + " | ".join(rows[1][1:]) + " |"
    with Image.open(tmp_path / "roc.png") as im:
        assert im.format == "PNG"


def test_predictions_csv_lists_the_findings_called(tmp_path):
    samples = _samples()[:4]
    samples[3] = sample("/cxr/unreadable.png", [0, 0, 0], error="/cxr/unreadable.png: corrupt or truncated image")
    engine, batches = evaluator(samples, PROBS[:4], batch_size=2)
    MultiLabelPredictionWriter(str(tmp_path), FINDINGS, threshold=[0.5, 0.5, 0.3]).attach(engine)
    engine.run(batches, max_epochs=1)
    raw = (tmp_path / "predictions.csv").read_bytes()
    assert b"\r" not in raw
    rows = list(csv.reader(raw.decode().splitlines()))
    assert rows == [
        ["file", "findings", "prob_Atelectasis", "prob_Cardiomegaly", "prob_Effusion", "error"],
        ["/cxr/00000000_000.png", "Atelectasis", "0.900000", "0.200000", "0.100000", ""],
        ["/cxr/00000001_000.png", "Cardiomegaly", "0.300000", "0.700000", "0.200000", ""],
        ["/cxr/00000002_000.png", "Atelectasis|Effusion", "0.600000", "0.400000", "0.700000", ""],
        ["/cxr/unreadable.png", "", "", "", "", "/cxr/unreadable.png: corrupt or truncated image"],
    ]
    with pytest.raises(ValueError, match=r"threshold must be one number or 3 numbers in \[0, 1\], got \[0.5, 2\]"):
        MultiLabelPredictionWriter(str(tmp_path), FINDINGS, threshold=[0.5, 2])


class _CamIsTheImage(torch.nn.Module):
    """A multi-label net whose Grad-CAM of ``features`` is its (non-negative) input for every finding."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(1, 1, 1, bias=False)
        self.head = torch.nn.Linear(1, n)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
            self.head.weight.copy_(torch.arange(1.0, n + 1)[:, None])
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_localization_pointing_game_and_iou_against_boxes(tmp_path):
    # model inputs 32 x 32 with a bright square at rows 8-15, columns 20-27; the files are 64 x 64
    images, paths = [], []
    for i in range(3):
        x = torch.zeros(1, 32, 32)
        x[0, 8:16, 20:28] = 1.0
        images.append(x)
        paths.append(str(tmp_path / f"0000000{i}_000.png"))
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(paths[-1])
    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00000000_000.png,Cardiomegaly,40,16,16,16\n"  # the square, in file pixels: a hit, IoU 1
                    "00000001_000.png,Effusion,0,40,20,20\n"  # elsewhere: a miss, IoU 0
                    "00000009_000.png,Cardiomegaly,0,0,8,8\n")  # not evaluated
    inferer = GradCAMInferer("features")
    net = _CamIsTheImage(len(FINDINGS))

    def step(engine, batch):
        x = torch.stack([b["image"].as_tensor() for b in batch])
        probs = torch.sigmoid(inferer(x, net))
        return [{"pred": p, "label": b["label"], "image": b["image"]} for p, b in zip(probs, batch)]

    data = [[{"image": MetaTensor(x, meta={"filename_or_obj": p}), "label": torch.zeros(3), "path": p}
             for x, p in zip(images[k:k + 2], paths[k:k + 2])] for k in (0, 2)]
    engine = Engine(step)
    loc = LocalizationEvaluator(inferer, str(bbox), str(tmp_path), FINDINGS)
    loc.attach(engine)
    MultiLabelReportWriter(str(tmp_path), FINDINGS, localization=loc).attach(engine)
    engine.run(data, max_epochs=1)

    out = json.loads((tmp_path / "localization.json").read_text())
    assert (out["n_boxes"], out["hit_rate"], out["mean_iou"], out["mean_mask_iou"]) == (2, 0.5, 0.5, 0.5)
    by_file = {b["file"]: b for b in out["boxes"]}
    assert by_file["00000000_000.png"]["box_in_model"] == [20.0, 8.0, 8.0, 8.0]
    assert by_file["00000000_000.png"] | {"hit": True, "iou": 1.0, "mask_iou": 1.0} == by_file["00000000_000.png"]
    assert (by_file["00000001_000.png"]["hit"], by_file["00000001_000.png"]["iou"]) == (False, 0.0)
    assert by_file["00000001_000.png"]["box_in_model"] == [0.0, 20.0, 10.0, 10.0]
    assert out["per_finding"]["Cardiomegaly"]["hit_rate"] == 1.0 and out["per_finding"]["Effusion"]["hit_rate"] == 0.0
    assert out["per_finding"]["Atelectasis"]["n_boxes"] == 0
    summary = json.loads((tmp_path / "metrics.json").read_text())["localization"]
    assert (summary["n_boxes"], summary["hit_rate"], summary["mean_iou"]) == (2, 0.5, 0.5)
    assert list(csv.reader((tmp_path / "auroc.csv").read_text().splitlines()))[0][-3:] == [
        "boxes", "pointing_game_hit_rate", "mean_iou"]


def test_localization_is_off_without_a_box_file(tmp_path):
    loc = LocalizationEvaluator(GradCAMInferer("features"), str(tmp_path / "missing.csv"), str(tmp_path),
                                FINDINGS)
    engine = Engine(lambda e, b: None)
    loc.attach(engine)
    engine.run([0], max_epochs=1)
    assert not loc.enabled and loc.report() is None and not (tmp_path / "localization.json").exists()
