"""The bundle contract, checked the same way for every bundle: metadata against MONAI's schema, the network's
input and output shapes, the workflow properties of training, inference and evaluation (train.yaml with the
evaluate.yaml overlay), and the evaluate overlays themselves (small, and defining nothing training has)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.bundles._contract import check_workflow_properties, verify_metadata, verify_net_in_out
from tests.bundles._runner import EVALUATE, REPO, SMOKE, bundle_dir

# bundle -> (its tiny dataset fixture in tests/bundles/conftest.py, the sub-folder inference reads)
BUNDLES = {
    "chest_xray_classification": ("cxr_demo", ""),
    "knee_mri_classification": ("knee_nifti", "exams"),
    "knee_mri_segmentation": ("knee_seg_demo", "exams"),
    "lung_xray_segmentation": ("lung_demo", ""),
    "retina_fundus_classification": ("fundus_demo", ""),
    "retina_oct_classification": ("oct_demo", ""),
}
# what an evaluate overlay may set that train.yaml has: where to write, what runs, and the validation section
# what an evaluation replaces besides validate#...: where it writes, what it runs, and the starting weights (none:
# the trained model.pt replaces them, and with no starting point the normalisation comes from its model.json)
REPLACEABLE = {"output_dir", "initialize", "run", "finalize", "pretrained"}


def _yaml(name: str, config: str) -> dict:
    return yaml.safe_load((bundle_dir(name) / "configs" / config).read_text())


def test_every_bundle_is_covered():
    assert sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir()) == sorted(BUNDLES)


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_metadata_validates_against_the_shipped_schema(name):
    meta = verify_metadata(bundle_dir(name))
    assert "evaluate.yaml" in meta["changelog"][meta["version"]]  # this version's entry says what changed


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_network_in_and_out_shapes(name):
    verify_net_in_out(bundle_dir(name))


@pytest.mark.parametrize("config, workflow", [("train.yaml", "train"), ("inference.yaml", "infer"),
                                              (EVALUATE, "train")], ids=["train", "inference", "train+evaluate"])
@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_workflow_properties(name, config, workflow, request, tmp_path):
    fixture, infer_sub = BUNDLES[name]
    data = Path(request.getfixturevalue(fixture))
    dataset_dir = data / infer_sub if config == "inference.yaml" else data
    check_workflow_properties(bundle_dir(name), config, workflow, dataset_dir, tmp_path / "out")


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_evaluate_is_a_small_overlay_on_train(name):
    """evaluate.yaml replaces only the validation section, the output folder and what runs; everything else
    (hyperparameters, network, preprocessing, the patient split) comes from train.yaml."""
    text = (bundle_dir(name) / "configs" / "evaluate.yaml").read_text()
    assert len(text.splitlines()) <= 50
    train, evaluate = _yaml(name, "train.yaml"), yaml.safe_load(text)
    redefined = {k for k in evaluate if k in train and k not in REPLACEABLE}
    assert not redefined, f"evaluate.yaml redefines {sorted(redefined)} of train.yaml"
    overlay_ids = {k for k in evaluate if "#" in k}
    assert overlay_ids and all(k.startswith("validate#") for k in overlay_ids), overlay_ids
    assert evaluate["validate#dataset#data"] == "$@datalist_all['test']"  # training's split, its test part
    assert evaluate["run"][0] == "$@validate#evaluator.run()"
    multi = _yaml(name, "multi_gpu_evaluate.yaml")
    assert multi["validate#sampler"]["even_divisible"] is False  # no test image scored twice
    assert multi["validate#dataloader#sampler"] == "@validate#sampler"
    assert "@validate#evaluator" in multi["run"][0]


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_smoke_overlay_sets_hyperparameters_of_the_bundle(name):
    """configs/smoke.yaml (merged after train.yaml, or train.yaml + evaluate.yaml) only sets ids those configs have:
    a key neither defines would change nothing."""
    smoke = set(yaml.safe_load(SMOKE.read_text()))
    if name.endswith("segmentation"):  # the segmentation networks have no pretrained starting weights
        smoke -= {"pretrained"}
    known = set(_yaml(name, "train.yaml")) | set(_yaml(name, "evaluate.yaml"))
    assert smoke <= known, smoke - known
