"""Starting weights of the classification bundles, run the way users run them (``python -m monai.bundle run``,
smoke overlay) with weights files built in the published names and layouts (random tensors) in a temporary
``TORCH_HOME`` / ``HOME``, and no way out to the network (every proxy points at a closed local port)."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medplugin.data.chestxray14 import FINDINGS
from medplugin.networks.weights import XRV_WEIGHTS
from tests.bundles._contract import check_exports, verify_net_in_out
from tests.bundles._runner import REPO, SMOKE, bundle_dir
from tests.networks._fake_weights import torchvision_file_name, write_torchvision_file, write_xrv_file

NIH = "torchxrayvision:densenet121-res224-nih"
# bundle -> (dataset fixture, the default architecture whose ImageNet file it needs, extra smoke overrides)
BUNDLES = {
    "retina_oct_classification": ("oct_demo", "resnet50", {}),
    "chest_xray_classification": ("cxr_demo", "densenet121", {"val_fraction": 0.3}),
    "retina_fundus_classification": ("fundus_demo", "resnet50", {}),
    "knee_mri_classification": ("knee_nifti", "resnet18", {"num_slices": 8}),
}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _offline_env(torch_home: Path, home: Path | None = None, **extra: str) -> dict:
    import matplotlib

    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "medplugin_offline")}
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env.update({k: proxy for k in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")})
    env.update({"TORCH_HOME": str(torch_home), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
                "MPLCONFIGDIR": matplotlib.get_configdir()})
    if home is not None:
        env["HOME"] = str(home)
    env.update(extra)
    return env


def _run(bundle: str, configs: list[str], env: dict, **overrides) -> subprocess.CompletedProcess:
    b = bundle_dir(bundle)
    files = [str(b / "configs" / c) if not Path(c).is_absolute() else c for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(b), "--config_file", json.dumps(files)]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    return subprocess.run(cmd, cwd=REPO, env=env, text=True, capture_output=True, timeout=900)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_offline_without_cached_weights_training_stops_before_the_first_epoch(bundle, request, tmp_path):
    fixture, arch, extra = BUNDLES[bundle]
    data = request.getfixturevalue(fixture)
    ckpt, out = tmp_path / "models", tmp_path / "train"
    proc = _run(bundle, ["train.yaml", str(SMOKE)], _offline_env(tmp_path / "torch"), dataset_dir=data,
                ckpt_dir=ckpt, output_dir=out, pretrained="imagenet", **extra)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    message = [line for line in log.splitlines() if "WeightsUnavailableError:" in line]
    assert len(message) == 1, log[-3000:]  # one message names architecture, file, cache folder and the command
    m = message[0]
    assert f"ImageNet weights for {arch}" in m and torchvision_file_name(arch) in m and f"folder {folder} " in m
    assert f"`medplugin weights fetch {arch}`" in m and "--pretrained none" in m
    assert not list(folder.glob("*.pth"))  # nothing was written as if downloaded, nothing random was used
    assert not ckpt.exists() and not list(out.glob("checkpoints/*")) and "train_loss" not in log


@pytest.mark.parametrize("bundle, overrides, setting", [
    ("retina_oct_classification", {"freeze_backbone": "true"}, "freeze_backbone true"),
    ("retina_oct_classification", {"arch": "inception_v3", "image_size": 80}, "arch inception_v3"),
    ("knee_mri_classification", {"transfer": "feature_extraction", "num_slices": 8}, "transfer feature_extraction"),
])
def test_frozen_modes_refuse_random_weights(bundle, overrides, setting, request, tmp_path):
    data = request.getfixturevalue(BUNDLES[bundle][0])
    proc = _run(bundle, ["train.yaml", str(SMOKE)], _offline_env(tmp_path / "torch"), dataset_dir=data,
                ckpt_dir=tmp_path / "models", output_dir=tmp_path / "train", pretrained="none", **overrides)
    assert proc.returncode != 0
    assert f"pretrained='none' with {setting}" in proc.stderr and "frozen layers keep their random weights" in proc.stderr
    assert not (tmp_path / "models").exists()


def test_none_trains_from_scratch_and_model_json_says_so(oct_smoke_run):
    ckpt, _ = oct_smoke_run  # the smoke overlay sets pretrained: none
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["pretrained"] == {"pretrained": "none"}


def test_cached_imagenet_file_is_used_offline_logged_and_recorded(oct_demo, tmp_path):
    path, _ = write_torchvision_file(tmp_path / "torch", "resnet50")
    ckpt = tmp_path / "models"
    log = _ok(_run("retina_oct_classification", ["train.yaml", str(SMOKE)],
                   _offline_env(tmp_path / "torch", MEDPLUGIN_OFFLINE="1"), dataset_dir=oct_demo, ckpt_dir=ckpt,
                   output_dir=tmp_path / "train", pretrained="imagenet"))
    assert f"resnet50 starts from ImageNet weights: {path}" in log
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["pretrained"] == {"pretrained": "imagenet", "weights": "torchvision ResNet50_Weights.IMAGENET1K_V1",
                                  "file": str(path)}


def _xrv():
    pytest.importorskip("torchxrayvision")
    with warnings.catch_warnings():  # its import silences every warning of the process
        import torchxrayvision

    return torchxrayvision


def test_chest_training_from_torchxrayvision_takes_its_input_convention(cxr_demo, tmp_path):
    _xrv()
    path, _ = write_xrv_file(tmp_path / "home", legacy=True)
    ckpt = tmp_path / "models"
    log = _ok(_run("chest_xray_classification", ["train.yaml", str(SMOKE)],
                   _offline_env(tmp_path / "torch", tmp_path / "home"), dataset_dir=cxr_demo, ckpt_dir=ckpt,
                   output_dir=tmp_path / "train", val_fraction=0.3, pretrained=NIH))
    assert f"densenet121 starts from torchxrayvision's densenet121-res224-nih: {path}" in log
    assert "outputs taken from torchxrayvision:densenet121-res224-nih for 14 of 14 classes" in log
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["normalization"] == [[0.5], [1 / 2048]]  # [-1024, 1024], what its weights expect
    assert meta["pretrained"] == {"pretrained": NIH, "file": str(path), "fresh_classes": []}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`medplugin weights export torchxrayvision:densenet121-res224-nih --bundle chest_xray_classification`,
    offline, from a cached torchxrayvision-layout file: (model folder, HOME, the file's state dict)."""
    _xrv()
    tmp = tmp_path_factory.mktemp("xrv_export")
    _, state = write_xrv_file(tmp / "home", legacy=True)
    out = tmp / "xrv_model"
    proc = subprocess.run([sys.executable, "-m", "medplugin.cli", "weights", "export", NIH, "--bundle",
                           "chest_xray_classification", "--out", str(out)], cwd=REPO, text=True, capture_output=True,
                          env=_offline_env(tmp / "torch", tmp / "home", MEDPLUGIN_OFFLINE="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out / 'model.pt'} and model.json (14 classes, densenet121, 224 px)" in proc.stdout
    return out, tmp / "home", state


def test_exported_model_passes_verify_net_in_out_and_exports_to_torchscript_and_onnx(exported, tmp_path):
    out, _, _ = exported
    b = bundle_dir("chest_xray_classification")
    verify_net_in_out(b)  # the inference config's network (the one model.pt fills) has metadata.json's shapes
    from medplugin.networks import classifier

    net = classifier("densenet121", 1, 14)
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    x = (torch.rand(2, 1, 224, 224) - 0.5) * 2048
    check_exports(b, out / "model.pt", net, x, tmp_path, "--image_size", "224")


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


def test_exported_model_infers_with_grad_cam_and_calls_what_torchxrayvision_calls(exported, tmp_path):
    out, home, _ = exported
    xrv = _xrv()
    images = _radiographs(tmp_path / "images")
    inf = tmp_path / "inference"
    # no other setting: model.json gives the normalisation; image size, channels and classes are the bundle's
    log = _ok(_run("chest_xray_classification", ["inference.yaml"], _offline_env(tmp_path / "torch", home),
                   dataset_dir=tmp_path / "images", ckpt_dir=out, output_dir=inf, num_workers=0))
    assert "loaded" in log
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
            ours = float(rows[p.name][f"prob_{finding}"])
            t = theirs[entry.labels.index(finding)].item()
            if abs(t - 0.5) > 1e-3:  # the same finding called, at the bundle's threshold 0.5, as torchxrayvision calls
                assert (ours >= 0.5) == (t >= 0.5), (p.name, finding, ours, t)
                compared += 1
        called = [f for f in FINDINGS if float(rows[p.name][f"prob_{f}"]) >= 0.5]
        assert rows[p.name]["findings"] == ("|".join(called) or "No Finding")
        cams = sorted(inf.glob(f"**/{p.stem}_*_gradcam.png"))
        assert len(cams) == len(called), (called, cams)  # a Grad-CAM overlay per finding called
    assert compared >= 20  # (of 28) calls compared away from the operating point itself


def test_exported_model_evaluates(exported, cxr_demo, tmp_path):
    out, home, _ = exported
    ev = tmp_path / "evaluate"
    # evaluate.yaml as on main (before it becomes an overlay on train.yaml) computes ImageNet's normalisation
    # itself: pass the recorded one, which model.json's check would otherwise name as the fix
    norm = json.loads((out / "model.json").read_text())["normalization"]
    _ok(_run("chest_xray_classification", ["evaluate.yaml"], _offline_env(tmp_path / "torch", home),
             dataset_dir=cxr_demo, ckpt_dir=out, output_dir=ev, num_workers=0, max_cam_images=2,
             normalization=json.dumps(norm).replace(" ", "")))
    metrics = json.loads((ev / "metrics.json").read_text())
    auroc = metrics["mean_auroc"]
    assert metrics["n"] > 0 and (auroc is None or math.isnan(auroc) or 0 <= auroc <= 1)
