"""Every multi_gpu_inference.yaml merges onto its bundle's inference.yaml with every reference resolved, shards the
inputs without duplicates, and keeps the resumable, streamed result table that joins the ranks' rows.
(The OCT overlay also runs under torchrun in tests/bundles/test_resume_inference.py, the lung segmentation overlay in
tests/bundles/test_lung_xray_segmentation.py.)"""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser

from tests.bundles._runner import bundle_dir

BUNDLES = ["chest_xray_classification", "knee_mri_classification", "knee_mri_segmentation", "lung_xray_segmentation",
           "retina_fundus_classification", "retina_oct_classification"]


@pytest.mark.parametrize("name", BUNDLES)
def test_overlay_resolves_and_shards_each_input_once(name):
    configs = bundle_dir(name) / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "inference.yaml"), str(configs / "multi_gpu_inference.yaml")])
    for id_ in ("evaluator", "initialize", "run", "finalize", "device", "output_dir"):
        parser.get_parsed_content(id_, instantiate=False, eval_expr=False)  # raises on a dangling @reference
    assert parser["dataloader"]["sampler"] == "@sampler" and parser["sampler"]["dataset"] == "@dataset"
    assert parser["sampler"]["even_divisible"] is False and parser["sampler"]["shuffle"] is False
    assert "pending_inputs" in parser["dataset"]["data"]
    handlers = str(parser["handlers"]) + str(parser.get("streaming_predictions", ""))
    assert "medplugin.handlers.StreamingPredictions" in handlers
    assert any("check_output_dir(@output_dir, [@dataset_dir], @resume)" in str(x) for x in parser["initialize"])
