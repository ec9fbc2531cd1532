"""The ``medplugin`` command: where it finds the bundles and overlays, and what it says when it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medplugin import resources
from medplugin.cli import _demo_overlays, main
from tests.bundles._runner import REPO


def test_bundles_lists_every_bundle_and_the_overlays(capsys):
    assert main(["bundles"]) == 0
    lines = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert lines["retina_oct_classification"] == str(REPO / "bundles" / "retina_oct_classification")
    assert set(lines) - {"overlays"} == set(resources.list_bundles(REPO / "bundles"))
    assert lines["overlays"] == str(REPO / "configs")


def test_demo_overlays_come_after_the_demo_overlay_in_the_order_given(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("num_epochs: 1\n")
    configs = REPO / "configs"
    assert _demo_overlays("retina_oct_classification", ["smoke", str(own)]) == [
        configs / "demo.yaml", configs / "smoke.yaml", own]
    assert _demo_overlays("knee_mri_segmentation", []) == [configs / "demo_knee_mri_segmentation.yaml"]


def test_demo_refuses_an_unknown_overlay_before_writing_anything(tmp_path, capsys):
    rc = main(["demo", "retina_oct_classification", "--out", str(tmp_path / "demo"), "--run", "--overlay", "smok"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{REPO / 'configs' / 'smok.yaml'}: no such overlay (overlays there: demo, " in err
    assert not (tmp_path / "demo").exists()


def test_demo_names_a_wrong_bundles_folder_before_writing_anything(tmp_path, capsys):
    rc = main(["demo", "retina_oct_classification", "--out", str(tmp_path / "demo"), "--run",
               "--bundles-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path / 'retina_oct_classification'}: no such bundle (bundles there: none)" in err
    assert not (tmp_path / "demo").exists()


def test_datalist_takes_the_bundles_spelling_and_the_old_one(oct_demo, tmp_path, capsys):
    new = tmp_path / "new.json"
    old = tmp_path / "old.json"
    assert main(["datalist", "oct2017", str(oct_demo), "-o", str(new), "--val_fraction", "0.34", "--split_seed", "3",
                 "--on_bad_input", "skip"]) == 0
    assert main(["datalist", "oct2017", str(oct_demo), "-o", str(old), "--val-fraction", "0.34", "--seed", "3",
                 "--on-bad-input", "skip"]) == 0
    assert json.loads(new.read_text()) == json.loads(old.read_text())


def test_an_unknown_option_names_the_closest_one(oct_demo, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["datalist", "oct2017", str(oct_demo), "-o", str(tmp_path / "x.json"), "--val_fractoin", "0.2"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option '--val_fractoin'; did you mean '--val_fraction'? (see medplugin datalist --help)" in err
    assert not (tmp_path / "x.json").exists()


def test_a_datalist_written_elsewhere_works_from_any_folder(oct_demo, tmp_path, monkeypatch, capsys):
    """``medplugin datalist ... -o /elsewhere/x.json`` run in one folder, then read from another."""
    from medplugin.data.datalist import read_datalist

    monkeypatch.chdir(oct_demo.parent)
    out = tmp_path / "elsewhere" / "x.json"
    out.parent.mkdir()
    assert main(["datalist", "oct2017", oct_demo.name, "-o", str(out)]) == 0
    monkeypatch.chdir(tmp_path)
    stored = json.loads(out.read_text())
    images = [item["image"] for section in stored.values() for item in section]
    assert images and all(Path(p).is_absolute() and Path(p).is_file() for p in images)
    assert read_datalist(out, sections=["training", "validation"]) == stored


@pytest.mark.slow  # writes the demo's 240 patients (about a minute)
def test_the_chest_demo_plants_the_findings_the_docs_figures_are_for(tmp_path, capsys):
    import csv

    from medplugin.cli import CHEST_DEMO_FINDINGS

    assert main(["demo", "chest_xray_classification", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "chestxray14" / "Data_Entry_2017.csv", newline="") as f:
        labels = {label for row in csv.DictReader(f) for label in row["Finding Labels"].split("|")}
    assert labels == {*CHEST_DEMO_FINDINGS, "No Finding"}
    docs = (REPO / "bundles" / "chest_xray_classification" / "docs" / "README.md").read_text()
    assert "four findings (Cardiomegaly, Effusion, Mass, Pneumothorax) on 120 patients" in docs
    assert tuple(CHEST_DEMO_FINDINGS) == ("Cardiomegaly", "Effusion", "Mass", "Pneumothorax")
