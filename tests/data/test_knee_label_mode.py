"""The knee classifier's default ``label_mode: auto``: the layout decides (the MRNet demo no longer stops with
"run with --label_mode binary"), and the choice is logged."""

from __future__ import annotations

import logging

import pytest
from monai.bundle import ConfigParser

from medplugin.data.knee import knee_class_names, resolve_label_mode
from medplugin.data.synthetic.knee import make_knee_nifti_demo, make_mrnet_demo
from medplugin.errors import BadInputError
from tests.bundles._runner import config_files


def test_the_layout_decides_and_the_choice_is_logged(tmp_path, caplog):
    mrnet = tmp_path / "mrnet"
    make_mrnet_demo(mrnet, n_train=4, n_valid=2, slices=(4, 5), size=16, seed=0)
    clinical = make_knee_nifti_demo(tmp_path / "clinical", n=4, shape=(4, 16, 16), seed=0)["root"]
    with caplog.at_level(logging.INFO, logger="medplugin.data.knee"):
        assert resolve_label_mode("auto", mrnet) == "binary"
        assert resolve_label_mode("auto", clinical) == "four"
        assert resolve_label_mode("auto", None, tmp_path / "datalist.json") == "four"
    assert "label_mode auto: binary (the MRNet layout's labels are binary)" in caplog.text
    assert "label_mode auto: four (the clinical layout's" in caplog.text
    assert resolve_label_mode("binary", clinical) == "binary"  # a choice is kept as given
    with pytest.raises(ValueError, match="label_mode must be 'four' or 'binary', got 'three'"):
        resolve_label_mode("three", clinical)
    with pytest.raises(BadInputError, match="data set folder not found"):
        resolve_label_mode("auto", tmp_path / "nothing")


def test_the_bundle_default_is_auto_and_its_classes_follow_the_layout(tmp_path):
    mrnet = tmp_path / "mrnet"
    make_mrnet_demo(mrnet, n_train=4, n_valid=2, slices=(4, 5), size=16, seed=0)
    parser = ConfigParser()
    parser.read_config(config_files("knee_mri_classification", "train.yaml"))
    assert parser["label_mode"] == "auto"
    parser["dataset_dir"] = str(mrnet)
    assert parser.get_parsed_content("class_names") == knee_class_names("binary")
    labels = {e["label"] for e in parser.get_parsed_content("datalist_all")["training"]}
    assert labels <= {0, 1}
