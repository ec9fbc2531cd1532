"""medplugin.tools.monailabel helpers that need no MONAI Label environment (the server test is tests/integration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import medplugin
from medplugin.cli import main
from medplugin.tools import monailabel
from tests.bundles._runner import REPO

OCT = REPO / "bundles" / "retina_oct_classification"


def test_every_bundle_with_metadata_and_an_inference_config_is_available():
    names = monailabel.available_bundles(REPO / "bundles")
    assert "retina_oct_classification" in names
    assert all((REPO / "bundles" / n / "configs" / "metadata.json").is_file() for n in names)


def test_merged_config_applies_the_bundles_overlay_and_overrides():
    train = monailabel.merged_config(OCT, "train", {"num_workers": 0})
    assert train["num_workers"] == 0
    assert train["label_from_file"]["_target_"] == "medplugin.transforms.ClassIndexFromFiled"
    assert train["train"]["preprocessing"]["transforms"][0] == "@label_from_file"
    assert train["datalist_all"]["training"] == "@train#dataset#data"
    assert train["train"]["handlers"] == monailabel.merged_config(OCT, "train")["train"]["handlers"]
    assert monailabel.merged_config(OCT, "inference")["save_cams"] is False
    # a config without a MONAI Label overlay of its own comes as it is (evaluate.yaml, itself an overlay on
    # train.yaml, cannot be read alone)
    assert monailabel.merged_config(OCT, "monailabel_inference") == {"save_cams": False}
    assert monailabel.merged_config(OCT, "no_such_config") is None


def test_weights_settings_take_plain_values_the_config_has(tmp_path):
    meta = {"arch": "densenet121", "image_size": 64, "class_names": ["CNV", "DME", "DRUSEN", "NORMAL"],
            "network": {"freeze_backbone": True, "features": [8, 16]}, "val_accuracy": 0.9}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    config = monailabel.merged_config(OCT, "inference")
    got = monailabel.weights_settings(tmp_path / "model.json", config)
    # class_names is computed by the config (an expression): left alone; metrics and unknown keys too
    assert got == {"arch": "densenet121", "image_size": 64, "freeze_backbone": True}
    assert monailabel.weights_settings(tmp_path / "missing.json", config) == {}


def test_server_line_is_offline_on_loopback(tmp_path):
    line = monailabel.server_line(tmp_path / "app", tmp_path / "studies", ["a_classification", "b_segmentation"],
                                  port=8123, env=tmp_path / "env")
    assert line.startswith(f"PATH={tmp_path / 'env' / 'bin'}:$PATH MONAI_LABEL_DATASTORE_FILE_EXT=")
    assert (f"monailabel start_server --app {tmp_path / 'app'} --studies {tmp_path / 'studies'} --host 127.0.0.1 "
            f"--port 8123 --conf models a_classification,b_segmentation --conf zoo_source github --conf sam2 false"
            ) in line


def test_server_line_passes_more_conf_pairs(tmp_path):
    cmd = monailabel.server_command(tmp_path / "app", tmp_path / "studies", ["a_classification"],
                                    conf={"uncertainty_models": ["a_classification"], "uncertainty_on_demand": False})
    assert cmd[-6:] == ["--conf", "uncertainty_models", "a_classification", "--conf", "uncertainty_on_demand", "false"]
    line = monailabel.server_line(tmp_path / "app", tmp_path / "studies", ["a_classification"],
                                  conf={"uncertainty_models": "all"})
    assert line.endswith("--conf sam2 false --conf uncertainty_models all")


def test_the_app_is_the_stock_app_with_the_uncertainty_strategies(tmp_path):
    """main.py keeps the stock app (as stock_main.py, byte for byte) and adds the mixins (uncertainty strategies,
    calls in classification answers, DICOM SEG answers for DICOM sources); MONAI Label takes the class of main.py
    whose direct bases include one named MONAILabelApp."""
    import ast

    stock = tmp_path / "env" / "monailabel" / "sample-apps" / "monaibundle"
    (stock / "lib").mkdir(parents=True)
    stock_main = "class MyApp(MONAILabelApp):\n    pass  # the stock app\n"
    (stock / "main.py").write_text(stock_main)
    (stock / "lib" / "__init__.py").write_text("")
    app = monailabel.assemble_app(tmp_path / "app", ["retina_oct_classification"], env=tmp_path / "env",
                                  bundles_root=REPO / "bundles")
    out = Path(app["app_dir"])
    assert (out / "stock_main.py").read_text() == stock_main and (out / "lib" / "__init__.py").is_file()
    tree = ast.parse((out / "main.py").read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert [c.name for c in classes] == ["MyApp"]
    assert [ast.unparse(b) for b in classes[0].bases] == ["DicomSegAppMixin", "DecisionAppMixin", "UncertaintyAppMixin",
                                                          "stock_main.MyApp", "MONAILabelApp"]
    imports = {ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert "from medplugin.tools.monailabel_activelearning import UncertaintyAppMixin" in imports
    assert "from medplugin.tools.monailabel_decisions import DecisionAppMixin" in imports
    assert "from medplugin.tools.monailabel_dicom import DicomSegAppMixin" in imports


def test_the_app_takes_the_weights_with_model_json_and_the_ood_statistics_it_names(tmp_path):
    """The input gate in the answers needs the model's OOD statistics: they travel with model.pt and model.json (a
    server without them failed every OCT answer: "the OOD statistics named in model.json are missing")."""
    stock = tmp_path / "env" / "monailabel" / "sample-apps" / "monaibundle"
    stock.mkdir(parents=True)
    (stock / "main.py").write_text("class MyApp(MONAILabelApp):\n    pass\n")
    weights = tmp_path / "trained"
    weights.mkdir()
    (weights / "model.pt").write_bytes(b"weights")
    (weights / "model.json").write_text(json.dumps({"arch": "resnet18", "ood": {"file": "ood_stats.npz"}}))
    (weights / "ood_stats.npz").write_bytes(b"statistics")
    (weights / "unrelated.txt").write_text("not the model's")
    app = monailabel.assemble_app(tmp_path / "app", ["retina_oct_classification"], env=tmp_path / "env",
                                  bundles_root=REPO / "bundles",
                                  weights={"retina_oct_classification": weights / "model.pt"})
    models = Path(app["app_dir"]) / "model" / "retina_oct_classification" / "models"
    assert sorted(p.name for p in models.iterdir()) == ["model.json", "model.pt", "ood_stats.npz"]
    assert (models / "ood_stats.npz").read_bytes() == b"statistics"


@pytest.mark.parametrize("args, message", [
    (["--bundles", "no_such_bundle"], "no_such_bundle: not a bundle MONAI Label can load"),
    (["--set", "num_workers"], "--set takes key=value"),
    (["--weights", "retina_oct_classification"], "--weights takes BUNDLE=PATH"),
    (["--weights", "retina_oct_classification=/nonexistent/model.pt"], "/nonexistent/model.pt: weights file"),
])
def test_monailabel_app_refuses_bad_arguments(tmp_path, args, message, capsys):
    rc = main(["monailabel-app", "--out", str(tmp_path / "app"), *args])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "app").exists()


def test_monailabel_app_never_overwrites(tmp_path, capsys):
    (tmp_path / "app").mkdir()
    rc = main(["monailabel-app", "--out", str(tmp_path / "app")])
    assert rc == 2 and "exists; choose a new folder" in capsys.readouterr().err


def test_monailabel_app_names_a_wrong_bundles_folder(tmp_path, capsys):
    rc = main(["monailabel-app", "--out", str(tmp_path / "app"), "--bundles-dir", str(tmp_path / "none")])
    assert rc == 2 and f"{tmp_path / 'none'}: no such folder (bundles folder from the folder given)" in (
        capsys.readouterr().err)
    assert not (tmp_path / "app").exists()


def test_tensorboard_command_needs_a_run_folder(tmp_path, capsys):
    rc = main(["tensorboard", str(tmp_path / "none")])
    assert rc == 2 and "no such run folder" in capsys.readouterr().err


def test_default_env_is_the_variable_else_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(monailabel.ENV_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    assert monailabel.default_env() == tmp_path / ".venv-monailabel"
    assert monailabel.env_python() == tmp_path / ".venv-monailabel" / "bin" / "python"
    monkeypatch.setenv(monailabel.ENV_VARIABLE, str(tmp_path / "ml"))
    assert monailabel.default_env() == tmp_path / "ml"
    assert monailabel.server_environment(base={"PATH": "/bin"})["PATH"] == f"{tmp_path / 'ml' / 'bin'}{os.pathsep}/bin"


@pytest.mark.integration  # creates a bare virtual environment and runs its Python
def test_the_environment_imports_the_callers_medplugin_through_its_link(tmp_path):
    """No checkout needed: the MONAI Label env imports the very package this interpreter imports (a wheel install,
    an editable checkout or PYTHONPATH), through one link that each ensure_env call points at it again."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    py = monailabel.env_python(env)
    _, site = monailabel._python_site(py)
    target = monailabel.link_medplugin(env, site)
    assert target == Path(medplugin.__file__).resolve().parent
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import medplugin, sys; print(medplugin.__file__); print(medplugin.__version__)"
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120, env=clean, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    file, version = out.stdout.split()
    assert Path(file) == env / monailabel.MEDPLUGIN_LAYER / "medplugin" / "__init__.py"
    assert Path(file).resolve() == target / "__init__.py" and version == medplugin.__version__
    # a later call relinks (to the same package here) and leaves one link
    assert monailabel.link_medplugin(env) == target
    assert [p.name for p in (env / monailabel.MEDPLUGIN_LAYER).iterdir()] == ["medplugin"]


def test_torch_is_shared_with_its_cuda_wheels(tmp_path):
    """The links cover torch, torchvision and every CUDA/triton wheel torch needs (else the env's torch would not
    find libcudart and friends), and nothing else (what MONAI Label pins differently must come from its env)."""
    from packaging.utils import canonicalize_name

    names = {canonicalize_name(d.metadata["Name"]) for d in monailabel.shareable_distributions()}
    assert {"torch", "torchvision"} <= names
    assert all(n in ("torch", "torchvision", "triton") or n.startswith(("nvidia-", "cuda-")) for n in names)
    assert "numpy" not in names and "pydicom" not in names
    if sys.platform == "linux" and "+cu" in __import__("torch").__version__:
        assert {"nvidia-cudnn-cu13", "nvidia-cublas", "triton"} <= names  # the CUDA build's own wheels


def test_a_broken_link_makes_the_environment_not_ready(tmp_path):
    """If the main environment is removed, the MONAI Label env's links dangle: ensure_env must relink or install
    its own torch, not hand back an interpreter that cannot import torch."""
    env = tmp_path / "env"
    layer = env / monailabel.SHARED_LAYER
    layer.mkdir(parents=True)
    (env / ".medplugin-installed").write_text(monailabel._stamp(monailabel.requirements()) + "\n")
    target = tmp_path / "torch"
    target.mkdir()
    (layer / "torch").symlink_to(target, target_is_directory=True)
    assert monailabel.env_ready(env)
    target.rmdir()
    assert not monailabel.env_ready(env)
    (env / ".medplugin-installed").write_text("other requirements\n")
    target.mkdir()
    assert not monailabel.env_ready(env)


def test_two_callers_at_once_create_the_environment_once(tmp_path, monkeypatch):
    """Two processes (xdist workers, two terminals) asking for a missing environment at once: one creates it while
    the other waits on the lock beside it, then finds it ready and reuses it."""
    import threading
    import time

    env = tmp_path / "ml-env"
    created = []

    def create(env_dir, py, python):  # what the real install leaves: the interpreter and the stamp
        created.append(threading.current_thread().name)
        time.sleep(0.5)  # long enough for the other caller to arrive while this one holds the lock
        py.parent.mkdir(parents=True, exist_ok=True)
        py.write_text("")
        (env_dir / ".medplugin-installed").write_text(monailabel._stamp(monailabel.requirements()) + "\n")
        return py

    monkeypatch.setattr(monailabel, "_create_env", create)
    monkeypatch.setattr(monailabel, "link_medplugin", lambda *a, **k: None)
    results = []
    callers = [threading.Thread(target=lambda: results.append(monailabel.ensure_env(env)), name=f"c{i}")
               for i in range(2)]
    for c in callers:
        c.start()
    for c in callers:
        c.join(timeout=30)
    assert len(created) == 1 and results == [env / "bin" / "python"] * 2
    assert (tmp_path / "ml-env.lock").is_file()
