"""The ``medplugin`` command: where it finds the bundles and overlays, and what it says when it cannot."""

from __future__ import annotations

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
