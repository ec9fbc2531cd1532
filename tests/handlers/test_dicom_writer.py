"""The SR of classification inference (:class:`DicomResultWriter`) on a tiny ignite engine with real radiographs:
the calls it records are the calls of predictions.csv, at model.json's operating points or at the run's fixed
``threshold``."""

from __future__ import annotations

import csv
import json

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from medplugin.handlers import DicomResultWriter  # noqa: E402
from medplugin.io.dicom_results import read_classification_sr  # noqa: E402
from tests.handlers._evaluator import evaluator, sample  # noqa: E402
from tests.io._dicom_helpers import sample_file, with_phi  # noqa: E402

CLASSES = ["Effusion", "Mass"]
PROBS = [[0.30, 0.80], [0.60, 0.10]]  # per radiograph


def _run(tmp_path, threshold=None):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    (ckpt / "model.json").write_text(json.dumps({"class_names": CLASSES, "operating_points": {
        "Effusion": {"threshold": 0.25, "criterion": "youden", "sensitivity": 0.9, "specificity": 0.8},
        "Mass": {"threshold": 0.85, "criterion": "youden", "sensitivity": 0.7, "specificity": 0.9}}}))
    files = [with_phi(sample_file(n), tmp_path / "in" / f"{k}.dcm") for k, n in enumerate(["RG1_UNCR.dcm",
                                                                                         "RG1_J2KR.dcm"])]
    out = tmp_path / "run"
    writer = DicomResultWriter(str(out), CLASSES, str(tmp_path / "chest_bundle"), ckpt_dir=str(ckpt),
                               dicom_output=True, multi_label=True, threshold=threshold)
    engine, batches = evaluator([sample(str(f), [0, 0]) for f in files], PROBS)
    writer.attach(engine)
    engine.run(batches, max_epochs=1)
    rows = list(csv.DictReader((out / "dicom_outputs.csv").open()))
    assert [r["object"] for r in rows] == ["SR", "SR"] and not any(r["error"] for r in rows), rows
    assert rows[0]["dicom_file"] == rows[1]["dicom_file"]  # one SR for the study of both radiographs
    return files, read_classification_sr(rows[0]["dicom_file"])


def test_sr_calls_at_the_stored_operating_points(tmp_path):
    files, report = _run(tmp_path)
    assert [r["sop_instance_uid"] for r in report] == [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    calls = [{c: v["call"] for c, v in r["findings"].items()} for r in report]
    assert calls == [{"Effusion": True, "Mass": False}, {"Effusion": True, "Mass": False}]
    assert report[0]["findings"]["Mass"]["probability"] == pytest.approx(0.8)


def test_a_fixed_threshold_makes_the_sr_calls_as_it_makes_the_csv_calls(tmp_path):
    """``--threshold 0.5`` (the chest bundle's setting): predictions.csv calls each finding at 0.5, and so must the SR
    (it had called them at model.json's points, disagreeing with the CSV)."""
    _, report = _run(tmp_path, threshold=0.5)
    calls = [{c: v["call"] for c, v in r["findings"].items()} for r in report]
    assert calls == [{"Effusion": False, "Mass": True}, {"Effusion": True, "Mass": False}]
