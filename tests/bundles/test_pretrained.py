"""Starting weights of the classification bundles, run the way users run them (``python -m monai.bundle run``,
smoke overlay) with weights files built in the published names and layouts (random tensors) in a temporary
``TORCH_HOME`` / ``HOME``, and no way out to the network (every proxy points at a closed local port).

Every run of this file goes through one batch (:mod:`tests.bundles._batch_runner`: one Python process runs each
case as ``python -m monai.bundle run`` / ``medplugin`` would, with its own environment and log), so the
interpreter and imports are paid once instead of once per run; the tests then read each case's exit status and
log."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medplugin.data.chestxray14 import FINDINGS
from medplugin.networks.weights import XRV_WEIGHTS
from tests.bundles._batch_runner import bundle_case, cli_case, monai_case, run_cases
from tests.bundles._runner import EVALUATE, SMOKE, bundle_dir, config_files
from tests.networks._fake_weights import torchvision_file_name, write_torchvision_file, write_xrv_file

NIH = "torchxrayvision:densenet121-res224-nih"
# bundle -> (dataset fixture, the default architecture whose ImageNet file it needs, extra smoke overrides)
BUNDLES = {
    "retina_oct_classification": ("oct_demo", "resnet50", {}),
    "chest_xray_classification": ("cxr_demo", "densenet121", {"val_fraction": 0.3}),
    "retina_fundus_classification": ("fundus_demo", "resnet50", {}),
    "knee_mri_classification": ("knee_nifti", "resnet18", {"num_slices": 8}),
}
FROZEN = {  # case -> (bundle, overrides, the setting the refusal names)
    "oct-freeze_backbone": ("retina_oct_classification", {"freeze_backbone": True}, "freeze_backbone true"),
    "oct-inception_v3": ("retina_oct_classification", {"arch": "inception_v3", "image_size": 80}, "arch inception_v3"),
    "knee-feature_extraction": ("knee_mri_classification", {"transfer": "feature_extraction", "num_slices": 8},
                                "transfer feature_extraction"),
}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _offline_env() -> dict:
    import matplotlib

    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "medplugin_offline")}
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env.update({k: proxy for k in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")})
    env.update({"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": matplotlib.get_configdir()})
    return env


def _xrv():
    pytest.importorskip("torchxrayvision")
    with warnings.catch_warnings():  # its import silences every warning of the process
        import torchxrayvision

    return torchxrayvision


def _has_xrv() -> bool:
    try:
        _xrv()
    except pytest.skip.Exception:
        return False
    return True


def _train(bundle: str, tmp: Path, name: str, env: dict, **overrides) -> dict:
    """A smoke training of ``bundle`` into ``tmp/name/{models,train}``."""
    b = bundle_dir(bundle)
    case = bundle_case(b, config_files(bundle, "train.yaml", SMOKE), env, ckpt_dir=tmp / name / "models",
                       output_dir=tmp / name / "train", **overrides)
    case["dirs"] = (str(tmp / name / "models"), str(tmp / name / "train"))
    return case


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict:
    """Every run of this file, in one batch: name -> ``{"rc", "log", "dirs", ...}``.

    - ``offline-<bundle>``: training with ``pretrained: imagenet`` and an empty cache;
    - ``frozen-<case>``: the frozen modes with ``pretrained: none``;
    - ``cached``: OCT training from a cached torchvision-layout ResNet-50 file (``MEDPLUGIN_OFFLINE=1``);
    - with torchxrayvision installed: ``xrv-train`` (chest training from a cached torchxrayvision-layout file),
      then ``export`` (``medplugin weights export``) and, on its output, ``verify``, ``torchscript``
      (``ckpt_export``), ``infer`` and ``evaluate``.
    """
    tmp = tmp_path_factory.mktemp("pretrained")
    empty, cache, home = tmp / "torch_empty", tmp / "torch", tmp / "home"
    empty.mkdir()
    data = {b: request.getfixturevalue(f) for b, (f, _, _) in BUNDLES.items()}
    cases: dict[str, dict] = {}
    for bundle, (_, _, extra) in BUNDLES.items():
        cases[f"offline-{bundle}"] = _train(bundle, tmp, f"offline-{bundle}", {"TORCH_HOME": empty},
                                            dataset_dir=data[bundle], pretrained="imagenet", **extra)
    for name, (bundle, overrides, _) in FROZEN.items():
        cases[f"frozen-{name}"] = _train(bundle, tmp, f"frozen-{name}", {"TORCH_HOME": empty},
                                         dataset_dir=data[bundle], pretrained="none", **overrides)
    resnet50, _ = write_torchvision_file(cache, "resnet50")
    cases["cached"] = _train("retina_oct_classification", tmp, "cached", {"TORCH_HOME": cache, "MEDPLUGIN_OFFLINE": 1},
                             dataset_dir=data["retina_oct_classification"], pretrained="imagenet")
    cases["cached"]["file"] = str(resnet50)
    if _has_xrv():
        chest = bundle_dir("chest_xray_classification")
        xrv_path, xrv_state = write_xrv_file(home, legacy=True)
        xrv_env = {"TORCH_HOME": empty, "HOME": home}
        cases["xrv-train"] = _train("chest_xray_classification", tmp, "xrv-train", xrv_env,
                                    dataset_dir=data["chest_xray_classification"], val_fraction=0.3, pretrained=NIH)
        cases["xrv-train"]["file"] = str(xrv_path)
        out = tmp / "xrv_model"
        cases["export"] = cli_case("weights", "export", NIH, "--bundle", "chest_xray_classification", "--out", out,
                                   env={**xrv_env, "MEDPLUGIN_OFFLINE": 1})
        cases["export"]["dirs"] = (str(out),)
        common = {"meta_file": chest / "configs" / "metadata.json", "config_file": chest / "configs" / "inference.yaml",
                  "bundle_root": chest}
        cases["verify"] = monai_case("verify_net_in_out", xrv_env, net_id="network_def", **common)
        cases["torchscript"] = monai_case("ckpt_export", xrv_env, net_id="network_def", filepath=tmp / "model.ts",
                                          ckpt_file=out / "model.pt", image_size=224, **common)
        cases["torchscript"]["dirs"] = (str(tmp / "model.ts"),)
        images = _radiographs(tmp / "images")
        # no other setting: model.json gives the normalisation; image size, channels and classes are the bundle's
        cases["infer"] = bundle_case(chest, config_files("chest_xray_classification", "inference.yaml"), xrv_env,
                                     dataset_dir=tmp / "images", ckpt_dir=out, output_dir=tmp / "inference",
                                     num_workers=0)
        cases["infer"]["dirs"] = (str(tmp / "inference"), [str(i) for i in images], str(home))
        # evaluation is an overlay on train.yaml: model.json's normalisation is taken, nothing else to pass
        cases["evaluate"] = bundle_case(chest, config_files("chest_xray_classification", EVALUATE), xrv_env,
                                        dataset_dir=data["chest_xray_classification"], ckpt_dir=out,
                                        output_dir=tmp / "evaluate", num_workers=0, max_cam_images=2)
        cases["evaluate"]["dirs"] = (str(tmp / "evaluate"),)
        cases["export"]["state"] = xrv_state
    states = {k: c.pop("state") for k, c in cases.items() if "state" in c}
    results = run_cases(list(cases.values()), _offline_env(), tmp / "logs")
    for (name, case), (rc, log) in zip(cases.items(), results):
        case.update(rc=rc, log=log, empty=str(empty), **({"state": states[name]} if name in states else {}))
    return cases


def _ok(case: dict) -> str:
    assert case["rc"] == 0, f"run failed ({case['rc']}):\n{case['log'][-6000:]}"
    return case["log"]


@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_offline_without_cached_weights_training_stops_before_the_first_epoch(bundle, runs):
    _, arch, _ = BUNDLES[bundle]
    case = runs[f"offline-{bundle}"]
    ckpt, out = (Path(d) for d in case["dirs"])
    log = case["log"]
    assert case["rc"] != 0
    folder = Path(case["empty"]) / "hub" / "checkpoints"
    message = [line for line in log.splitlines() if "WeightsUnavailableError:" in line]
    assert len(message) == 1, log[-3000:]  # one message names architecture, file, cache folder and the command
    m = message[0]
    assert f"ImageNet weights for {arch}" in m and torchvision_file_name(arch) in m and f"folder {folder} " in m
    assert f"`medplugin weights fetch {arch}`" in m and "--pretrained none" in m
    assert not list(folder.glob("*.pth"))  # nothing was written as if downloaded, nothing random was used
    assert not ckpt.exists() and not list(out.glob("checkpoints/*")) and "train_loss" not in log


@pytest.mark.parametrize("name", list(FROZEN))
def test_frozen_modes_refuse_random_weights(name, runs):
    setting = FROZEN[name][2]
    case = runs[f"frozen-{name}"]
    assert case["rc"] != 0
    log = case["log"]
    assert f"pretrained='none' with {setting}" in log and "frozen layers keep their random weights" in log
    assert not Path(case["dirs"][0]).exists()


def test_none_trains_from_scratch_and_model_json_says_so(oct_smoke_run):
    ckpt, _ = oct_smoke_run  # the smoke overlay sets pretrained: none
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["pretrained"] == {"pretrained": "none"}


def test_cached_imagenet_file_is_used_offline_logged_and_recorded(runs):
    case = runs["cached"]
    path, ckpt = case["file"], Path(case["dirs"][0])
    log = _ok(case)
    assert f"resnet50 starts from ImageNet weights: {path}" in log
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["pretrained"] == {"pretrained": "imagenet", "weights": "torchvision ResNet50_Weights.IMAGENET1K_V1",
                                  "file": str(path)}


def test_chest_training_from_torchxrayvision_takes_its_input_convention(runs):
    _xrv()
    case = runs["xrv-train"]
    path, ckpt = case["file"], Path(case["dirs"][0])
    log = _ok(case)
    assert f"densenet121 starts from torchxrayvision's densenet121-res224-nih: {path}" in log
    assert "outputs taken from torchxrayvision:densenet121-res224-nih for 14 of 14 classes" in log
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["normalization"] == [[0.5], [1 / 2048]]  # [-1024, 1024], what its weights expect
    assert meta["pretrained"] == {"pretrained": NIH, "file": str(path), "fresh_classes": []}


@pytest.fixture(scope="module")
def exported(runs):
    """`medplugin weights export torchxrayvision:densenet121-res224-nih --bundle chest_xray_classification`,
    offline, from a cached torchxrayvision-layout file: (model folder, the file's state dict)."""
    _xrv()
    case = runs["export"]
    out = Path(case["dirs"][0])
    assert f"wrote {out / 'model.pt'} and model.json (14 classes, densenet121, 224 px)" in _ok(case)
    return out, case["state"]


def test_exported_model_passes_verify_net_in_out_and_exports_to_torchscript(exported, runs):
    out, _ = exported
    # the inference config's network (the one model.pt fills) has metadata.json's shapes
    assert "data shape of network is verified with no error" in _ok(runs["verify"])
    from medplugin.networks import classifier

    net = classifier("densenet121", 1, 14).eval()
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    x = (torch.rand(2, 1, 224, 224) - 0.5) * 2048
    _ok(runs["torchscript"])  # `ckpt_export` reads model.pt into the inference config's network_def
    with torch.no_grad():
        expected = net(x)
    # ONNX export of this network_def (DenseNet-121, 14 outputs) is tested in test_chest_xray_classification
    torch.testing.assert_close(torch.jit.load(runs["torchscript"]["dirs"][0])(x), expected, atol=1e-4, rtol=0)


def _radiographs(folder: Path, n: int = 2) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        yy, xx = np.mgrid[:224, :224]
        img = 120 + 60 * np.sin(xx / (9 + 4 * i)) * np.cos(yy / 17) + rng.normal(0, 20, (224, 224))
        paths.append(folder / f"cxr{i}.png")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(paths[-1])
    return paths


def test_exported_model_infers_with_grad_cam_and_calls_what_torchxrayvision_calls(exported, runs):
    xrv = _xrv()
    case = runs["infer"]
    inf, images, home = Path(case["dirs"][0]), [Path(i) for i in case["dirs"][1]], case["dirs"][2]
    assert "loaded" in _ok(case)
    rows = {Path(r["file"]).name: r for r in csv.DictReader((inf / "predictions.csv").open())}
    assert set(rows) == {p.name for p in images} and all(r["error"] == "" for r in rows.values())
    entry = XRV_WEIGHTS["densenet121-res224-nih"]
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)  # torchxrayvision reads the same cached file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = xrv.models.DenseNet(weights="densenet121-res224-nih").eval()
    finally:
        os.environ["HOME"] = old_home
    from PIL import Image

    compared = 0
    for p in images:
        x = torch.from_numpy(xrv.datasets.normalize(np.asarray(Image.open(p)), 255)[None, None])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = model(x)[0]  # op_norm'd: 0.5 is each pathology's operating point
        for finding in FINDINGS:
            ours = int(rows[p.name][f"call_{finding}"])  # called at model.json's operating point (its op_thresh)
            t = theirs[entry.labels.index(finding)].item()
            if abs(t - 0.5) > 1e-3:  # the same finding called as torchxrayvision calls it
                assert ours == int(t >= 0.5), (p.name, finding, rows[p.name][f"prob_{finding}"], t)
                compared += 1
        called = [f for f in FINDINGS if rows[p.name][f"call_{f}"] == "1"]
        assert rows[p.name]["findings"] == ("|".join(called) or "No Finding")
        cams = sorted(inf.glob(f"**/{p.stem}_*_gradcam.png"))
        assert len(cams) == len(called), (called, cams)  # a Grad-CAM overlay per finding called
    assert compared >= 20  # (of 28) calls compared away from the operating point itself


def test_exported_model_evaluates(exported, runs):
    case = runs["evaluate"]
    _ok(case)  # train.yaml + evaluate.yaml, as users evaluate: the normalisation comes from model.json
    metrics = json.loads((Path(case["dirs"][0]) / "metrics.json").read_text())
    auroc = metrics["mean_auroc"]
    assert metrics["n"] > 0 and (auroc is None or math.isnan(auroc) or 0 <= auroc <= 1)
