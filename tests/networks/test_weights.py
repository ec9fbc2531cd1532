"""Starting weights: torchvision's ImageNet files through torch's cache, torchxrayvision's chest X-ray models from
theirs, offline failures, frozen modes, and the ``medplugin weights`` command. Every file is built here in the
published name and key layout with random tensors, in a temporary ``TORCH_HOME`` / ``HOME``."""

from __future__ import annotations

import json
import pickle
import re
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from medplugin.cli import main as cli
from medplugin.data.chestxray14 import FINDINGS
from medplugin.errors import BadInputError
from medplugin.networks import classifier, input_normalization, knee_classifier
from medplugin.networks.mrnet import MRNet
from medplugin.networks.pretrained import read_pickled_module
from medplugin.networks.weights import (
    XRV_MODULE_CLASSES,
    XRV_WEIGHTS,
    WeightsUnavailableError,
    map_labels,
    resolve_pretrained,
)
from tests.networks._fake_weights import torchvision_file_name, write_torchvision_file, write_xrv_file

REPO = Path(__file__).resolve().parents[2]
NIH = "torchxrayvision:densenet121-res224-nih"
_OLD_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\..*)$")


@pytest.fixture(scope="module")
def tv_home(tmp_path_factory) -> Path:
    """A TORCH_HOME holding torchvision's files of resnet18, resnet50, densenet121 (2017 key names),
    inception_v3 and alexnet, with random tensors."""
    home = tmp_path_factory.mktemp("torch_home")
    for arch in ("resnet18", "resnet50", "densenet121", "inception_v3", "alexnet"):
        write_torchvision_file(home, arch)
    return home


@pytest.fixture
def no_network(monkeypatch):
    """No way out: every proxy variable points at a closed local port (urllib honours them), none bypassed."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    for var in ("no_proxy", "NO_PROXY", "MEDPLUGIN_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def test_registry_names_torchvision_files_as_torchvision_does():
    # the file names come from the installed torchvision's enums; the one the chest docs name is among them
    assert torchvision_file_name("densenet121") == "densenet121-a639ec97.pth"
    from medplugin.networks import known_weights

    listed = {w.fetch_name: w for w in known_weights()}
    for arch in ("resnet18", "resnet50", "densenet121", "inception_v3", "alexnet", "vgg16"):
        assert listed[arch].path.name == torchvision_file_name(arch)
        assert listed[arch].size_mb > 1


def _bundle_network(bundle: str, torch_home: Path, monkeypatch, **overrides):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.yaml"))
    if bundle == "knee_mri_classification":  # its output count follows the data (label_mode auto); no data here
        overrides = {"label_mode": "four", **overrides}
    parser.update({"bundle_root": str(REPO / "bundles" / bundle), **overrides})
    return parser.get_parsed_content("network_def"), parser


def _canonical(k: str) -> str:
    m = _OLD_DENSENET.match(k)
    return m.group(1) + m.group(2) if m else k


def _expected_key(net_kind: str, k: str) -> str | None:
    """Where a torchvision key must land in our network (written here independently of the code under test)."""
    k = _canonical(k)
    if net_kind == "resnet":
        return None if k.startswith("fc.") else k
    if net_kind == "densenet":
        if k.startswith("classifier."):
            return None
        return re.sub(r"(denselayer\d+)\.", r"\1.layers.", k)
    if net_kind == "inception":
        return None if k.startswith(("fc.", "AuxLogits.")) else "base." + k
    if net_kind in ("mrnet_alexnet", "mrnet_vgg16"):
        return "backbone." + k[len("features."):] if k.startswith("features.") else None
    if net_kind == "mrnet_resnet18":
        return None if k.startswith("fc.") else "backbone." + k
    if net_kind == "mrnet_densenet121":
        return "backbone." + k if k.startswith("features.") else None
    raise AssertionError(net_kind)


CASES = [  # bundle, overrides, torchvision arch, how keys map, first conv: ours <- file
    ("retina_oct_classification", {}, "resnet50", "resnet", "conv1.weight", "sum"),
    ("retina_oct_classification", {"arch": "densenet121"}, "densenet121", "densenet", "features.conv0.weight", "sum"),
    ("retina_oct_classification", {"arch": "inception_v3"}, "inception_v3", "inception",
     "base.Conv2d_1a_3x3.conv.weight", "sum"),
    ("chest_xray_classification", {}, "densenet121", "densenet", "features.conv0.weight", "sum"),
    ("retina_fundus_classification", {}, "resnet50", "resnet", "conv1.weight", "same"),
    ("retina_fundus_classification", {"preprocessing_mode": "annotated", "annotate": "channels"}, "resnet50",
     "resnet", "conv1.weight", "rgb+zeros"),
    ("knee_mri_classification", {}, "resnet18", "mrnet_resnet18", "backbone.conv1.weight", "same"),
    ("knee_mri_classification", {"backbone": "densenet121"}, "densenet121", "mrnet_densenet121",
     "backbone.features.conv0.weight", "same"),
    ("knee_mri_classification", {"backbone": "alexnet"}, "alexnet", "mrnet_alexnet", "backbone.0.weight", "same"),
]


@pytest.mark.parametrize("bundle, overrides, arch, kind, first, adapt", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[5]}" for c in CASES])
def test_each_bundle_network_starts_from_exactly_the_cached_imagenet_tensors(
        bundle, overrides, arch, kind, first, adapt, tv_home, monkeypatch, no_network):
    net, parser = _bundle_network(bundle, tv_home, monkeypatch, pretrained="imagenet", **overrides)
    file_state = torch.load(tv_home / "hub" / "checkpoints" / torchvision_file_name(arch), weights_only=True)
    own = net.state_dict()
    covered = set()
    for k, v in file_state.items():
        key = _expected_key(kind, k)
        if key is None:
            continue
        if key == first:
            expected = {"sum": v.sum(1, keepdim=True), "same": v,
                        "rgb+zeros": torch.cat([v, v.new_zeros(v.shape[0], 2, *v.shape[2:])], 1)}[adapt]
            assert own[key].shape[1] == parser.get_parsed_content("in_channels") or kind.startswith("mrnet")
        else:
            expected = v
        assert torch.equal(own[key], expected), key
        covered.add(key)
    head = ("fc.", "class_layers.", "head.")
    backbone = {k for k in own if not k.startswith(head) and not k.endswith("num_batches_tracked")}
    assert backbone - covered == set()  # every backbone tensor came from the file
    assert net.pretrained_source == {"pretrained": "imagenet", "weights": f"torchvision {_enum(arch)}",
                                     "file": str(tv_home / "hub" / "checkpoints" / torchvision_file_name(arch))}


def _enum(arch):
    from medplugin.networks.weights import TORCHVISION_WEIGHTS

    return TORCHVISION_WEIGHTS[arch]


@pytest.mark.slow
def test_mrnet_vgg16_starts_from_the_cached_imagenet_tensors(tmp_path, monkeypatch, no_network):
    _, state = write_torchvision_file(tmp_path, "vgg16")  # the real layout: 528 MB with its classifier
    net, _ = _bundle_network("knee_mri_classification", tmp_path, monkeypatch, pretrained="imagenet",
                             backbone="vgg16")
    own = net.state_dict()
    for k, v in state.items():
        if k.startswith("features."):
            assert torch.equal(own["backbone." + k[len("features."):]], v), k


def _assert_offline_message(err: str, arch: str, file: str, folder: Path, fetch: str) -> None:
    assert arch in err and file in err and str(folder) in err
    assert f"`medplugin weights fetch {fetch}`" in err and "--pretrained none" in err


def test_offline_without_the_file_stops_at_once_naming_file_folder_and_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("MEDPLUGIN_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as e:
        classifier("resnet50", num_classes=4, pretrained="imagenet")
    assert time.monotonic() - start < 5
    folder = tmp_path / "hub" / "checkpoints"
    _assert_offline_message(str(e.value), "resnet50", torchvision_file_name("resnet50"), folder, "resnet50")
    assert "MEDPLUGIN_OFFLINE=1" in str(e.value) and not list(folder.glob("*.pth"))


def test_unreachable_download_server_fails_quickly_with_the_same_message(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as e:
        MRNet("densenet121", pretrained="imagenet")
    assert time.monotonic() - start < 15
    _assert_offline_message(str(e.value), "densenet121", "densenet121-a639ec97.pth", tmp_path / "hub" / "checkpoints",
                            "densenet121")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as e:
        resolve_pretrained(NIH, "densenet121")
    _assert_offline_message(str(e.value), "densenet121", XRV_WEIGHTS["densenet121-res224-nih"].file,
                            tmp_path / ".torchxrayvision" / "models_data", NIH)


def test_cached_file_needs_no_network(tv_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tv_home))
    monkeypatch.setenv("MEDPLUGIN_OFFLINE", "1")
    net = classifier("resnet18", num_classes=2, pretrained="imagenet")
    assert net.pretrained_source["file"].endswith(torchvision_file_name("resnet18"))


def test_archs_without_published_weights_and_unknown_sources_are_named():
    with pytest.raises(ValueError, match="no ImageNet weights for 'seresnet50'"):
        classifier("seresnet50", in_channels=3, pretrained="imagenet")
    with pytest.raises(ValueError, match="no ImageNet weights for the 3D ResNet-18"):
        knee_classifier("resnet3d18", pretrained="imagenet")
    with pytest.raises(ValueError, match="'imagnet' is neither a file nor a known source"):
        classifier("resnet18", pretrained="imagnet")
    with pytest.raises(ValueError, match="unknown weights 'torchxrayvision:resnet50-res512-all'"):
        classifier("densenet121", pretrained="torchxrayvision:resnet50-res512-all")
    with pytest.raises(ValueError, match="is a densenet121 model; it cannot start arch 'resnet50'"):
        classifier("resnet50", pretrained=NIH)


def test_frozen_modes_refuse_random_weights_and_name_the_setting():
    with pytest.raises(ValueError, match="pretrained='none' with freeze_backbone true: frozen layers"):
        classifier("resnet18", freeze_backbone=True, pretrained="none")
    with pytest.raises(ValueError, match="pretrained='none' with arch inception_v3 .*frozen by default"):
        classifier("inception_v3", pretrained="none")
    with pytest.raises(ValueError, match="pretrained='none' with transfer feature_extraction"):
        knee_classifier(transfer="feature_extraction", pretrained="none")
    with pytest.raises(ValueError, match="pretrained='none' with a frozen backbone"):
        MRNet("resnet18", freeze_backbone=True, pretrained="none")
    # trained from scratch: fine; no starting weights at all (evaluation/inference load trained ones): fine
    assert classifier("inception_v3", freeze_backbone=False, pretrained="none").pretrained_source == {
        "pretrained": "none"
    }
    assert classifier("inception_v3").freeze_backbone and knee_classifier(transfer="feature_extraction")
    assert knee_classifier(transfer="scratch", pretrained="imagenet").pretrained_source == {"pretrained": "none"}


def test_model_json_normalisation_is_used_for_evaluation_and_inference_only(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"normalization": [[0.5], [0.00048828125]]}))
    assert input_normalization("densenet121", 1, None, tmp_path) == ([0.5], [1 / 2048])
    assert input_normalization("densenet121", 1, "none", tmp_path) == input_normalization("densenet121", 1)
    assert input_normalization("densenet121", 1, NIH) == ([0.5], [1 / 2048])
    assert input_normalization("densenet121", 1, None, tmp_path / "elsewhere") == input_normalization("densenet121", 1)


def test_label_mapping_names_what_starts_fresh(caplog):
    chex = ["Atelectasis", "Consolidation", "", "Pneumothorax", "Edema", "", "", "Effusion", "Pneumonia", "",
            "Cardiomegaly", "", "", "", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
    mapping, fresh = map_labels(chex, FINDINGS)
    assert fresh == ["Infiltration", "Mass", "Nodule", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
    assert all(chex[s] == FINDINGS[t] for t, s in mapping.items()) and len(mapping) == 7
    assert map_labels(["pleural thickening"], ["Pleural_Thickening"])[0] == {0: 0}


# ---- torchxrayvision -----------------------------------------------------------------------------------------

def _xrv():
    """torchxrayvision, imported inside catch_warnings (its import silences every warning of the process)."""
    pytest.importorskip("torchxrayvision")
    with warnings.catch_warnings():
        import torchxrayvision

    return torchxrayvision


def test_registry_entries_match_the_installed_torchxrayvision():
    models = _xrv().models
    for name, entry in XRV_WEIGHTS.items():
        theirs = models.model_urls[name]
        assert theirs["weights_url"] == entry.url and Path(theirs["weights_url"]).name == entry.file
        assert tuple(theirs["labels"]) == entry.labels
        np.testing.assert_allclose(theirs["op_threshs"], entry.op_threshs, equal_nan=True)
        assert theirs["input_resolution"] == entry.image_size
    assert Path(_xrv().utils.get_cache_dir()) == Path("~/.torchxrayvision/models_data").expanduser()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "pre-1.6 format"])
def test_xrv_pickled_model_is_read_without_its_code(tmp_path, legacy):
    _xrv()
    path, state = write_xrv_file(tmp_path, legacy=legacy)
    got = read_pickled_module(path, XRV_MODULE_CLASSES)
    assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)
    with pytest.raises(BadInputError, match="refused to load.*torchxrayvision.models._Transition"):
        read_pickled_module(path, [c for c in XRV_MODULE_CLASSES if not c.endswith("_Transition")])


class _Evil:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['EVIL_MARK'], 'w').write('ran')",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "pre-1.6 format"])
def test_a_pickled_model_file_that_would_run_code_is_refused(tmp_path, monkeypatch, legacy):
    mark = tmp_path / "ran"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.payload = _Evil()
    path = tmp_path / "evil.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(BadInputError, match="evil.pt: refused to load"):
        read_pickled_module(path, XRV_MODULE_CLASSES)
    assert not mark.exists()
    with open(path, "wb") as f:  # a plain pickle, not a torch file
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(BadInputError, match="evil.pt"):
        read_pickled_module(path, XRV_MODULE_CLASSES)
    assert not mark.exists()


@pytest.fixture(scope="module")
def xrv_home(tmp_path_factory):
    _xrv()
    home = tmp_path_factory.mktemp("xrv_home")
    _, state = write_xrv_file(home, "densenet121-res224-nih", legacy=True)
    return home, state


def test_chest_network_starts_from_torchxrayvision_finding_by_finding(xrv_home, monkeypatch, no_network, caplog):
    home, state = xrv_home
    monkeypatch.setenv("HOME", str(home))
    with caplog.at_level("INFO"):
        net, parser = _bundle_network("chest_xray_classification", home, monkeypatch, pretrained=NIH)
    own = net.state_dict()
    for k, v in state.items():
        if k.startswith("features."):
            assert torch.equal(own[re.sub(r"(denselayer\d+)\.", r"\1.layers.", k)], v), k
    labels = XRV_WEIGHTS["densenet121-res224-nih"].labels
    for i, finding in enumerate(FINDINGS):  # each of our findings gets the row torchxrayvision trained for it
        j = labels.index(finding)
        assert torch.equal(own["class_layers.out.weight"][i], state["classifier.weight"][j]), finding
        assert torch.equal(own["class_layers.out.bias"][i], state["classifier.bias"][j]), finding
    assert "outputs taken from torchxrayvision:densenet121-res224-nih for 14 of 14 classes" in caplog.text
    assert str(home / ".torchxrayvision" / "models_data") in caplog.text  # the file read is logged
    # the input convention travels with the weights: torchxrayvision's [-1024, 1024] in the chest preprocessing
    assert parser.get_parsed_content("normalization") == ([0.5], [1 / 2048])


def test_chest_preprocessing_and_network_reproduce_torchxrayvision(xrv_home, tmp_path, monkeypatch, no_network):
    """Our preprocessing of a 224 px radiograph gives torchxrayvision's input, our network its logits."""
    from PIL import Image

    from medplugin.transforms import chest_xray_preprocessing

    xrv_pkg = _xrv()
    home, _ = xrv_home
    monkeypatch.setenv("HOME", str(home))
    rng = np.random.default_rng(0)
    img = (rng.random((224, 224)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "cxr.png")
    mean, std = input_normalization("densenet121", 1, NIH)
    x = chest_xray_preprocessing(224, 1, mean, std)({"image": str(tmp_path / "cxr.png")})["image"][None]
    theirs_x = torch.from_numpy(xrv_pkg.datasets.normalize(img, 255)[None, None])
    torch.testing.assert_close(x, theirs_x, atol=1e-3, rtol=0)
    net = classifier("densenet121", 1, 14, pretrained=NIH, class_names=FINDINGS).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = xrv_pkg.models.DenseNet(weights="densenet121-res224-nih").eval()  # reads the same cached file
        with torch.no_grad():
            theirs = model.classifier(model.features2(x))
            ours = net(x)
    labels = XRV_WEIGHTS["densenet121-res224-nih"].labels
    for i, finding in enumerate(FINDINGS):
        torch.testing.assert_close(ours[:, i], theirs[:, labels.index(finding)], atol=1e-4, rtol=1e-4)


# ---- the `medplugin weights` command ---------------------------------------------------------------------------

def test_weights_list_and_fetch_work_offline_on_cached_files(tv_home, xrv_home, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tv_home))
    monkeypatch.setenv("HOME", str(xrv_home[0]))
    monkeypatch.setenv("MEDPLUGIN_OFFLINE", "1")
    assert cli(["weights", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    for arch in ("resnet18", "resnet50", "densenet121", "inception_v3", "alexnet"):
        assert torchvision_file_name(arch) in rows[arch] and " MB" in rows[arch]
        assert " cached " in rows[arch] and "not cached" not in rows[arch]
    assert "not cached" in rows["vgg16"] and "527.8 MB" in rows["vgg16"]
    assert "not cached" not in rows[NIH] and "not cached" in rows["torchxrayvision:densenet121-res224-all"]
    assert " MB " in rows[NIH]  # the cached file's size
    assert cli(["weights", "fetch", "resnet50", NIH]) == 0
    assert "already cached" in capsys.readouterr().out
    assert cli(["weights", "fetch", "vgg16"]) == 2
    err = capsys.readouterr().err
    _assert_offline_message(err, "vgg16", torchvision_file_name("vgg16"), tv_home / "hub" / "checkpoints", "vgg16")
    assert cli(["weights", "fetch", "vit"]) == 2 and "unknown weights 'vit'" in capsys.readouterr().err


def test_weights_export_writes_a_ready_chest_model_offline(xrv_home, tmp_path, monkeypatch, capsys):
    home, state = xrv_home
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MEDPLUGIN_OFFLINE", "1")
    out = tmp_path / "xrv_model"
    assert cli(["weights", "export", NIH, "--bundle", str(REPO / "bundles" / "chest_xray_classification"),
                "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"] == "densenet121" and meta["image_size"] == 224 and meta["in_channels"] == 1
    assert meta["class_names"] == list(FINDINGS) and meta["normalization"] == [[0.5], [1 / 2048]]
    assert meta["pretrained"]["pretrained"] == NIH and meta["pretrained"]["fresh_classes"] == []
    weights = torch.load(out / "model.pt", weights_only=True)
    entry = XRV_WEIGHTS["densenet121-res224-nih"]
    for i, finding in enumerate(FINDINGS):  # the logits are torchxrayvision's own; its operating points are stored
        j = entry.labels.index(finding)
        torch.testing.assert_close(weights["class_layers.out.bias"][i], state["classifier.bias"][j])
        t = entry.op_threshs[j]
        assert 0 < t < 1 and meta["operating_points"][finding] == {"threshold": t,
                                                                   "criterion": "torchxrayvision op_threshs"}
    assert "temperature" not in meta  # torchxrayvision's probabilities as they are
    assert cli(["weights", "export", NIH, "--bundle", "chest_xray_classification", "--bundles-root",
                str(REPO / "bundles"), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert cli(["weights", "export", "imagenet", "--bundle", str(REPO / "bundles" / "chest_xray_classification"),
                "--out", str(tmp_path / "x")]) == 2
    assert "labelled outputs" in capsys.readouterr().err
