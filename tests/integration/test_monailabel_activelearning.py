"""MONAI Label labels the most uncertain study first: the uncertainty strategy in a real MONAI Label 0.8.5 server.

For one classification bundle (retinal OCT) and one segmentation bundle (lung fields) in turn: the bundle is trained
by the MONAI bundle runner on synthetic data, the app is assembled with ``medplugin monailabel-app``, and a studies
folder is planted: studies the trained model is sure about, one built to be ambiguous (OCT: a blend of two B-scans
the model is sure are of different classes, weighted where its plain prediction is least sure; lungs: a radiograph
with its contrast lowered and heavy noise added), a labelled study built the same way (labelled studies are neither
scored nor proposed), and, for OCT, a file the bundle cannot read. The server runs with ``--conf uncertainty_models
<bundle>`` (one bundle per server: a model scores every unlabelled study of the datastore, and an OCT model has
nothing to say about radiographs) and is asked ``POST /activelearning/<bundle>_uncertainty``: the answer must be the
planted ambiguous study.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from medplugin.tools import monailabel
from medplugin.tools.review import free_port, http_json, running_server
from tests.bundles._runner import REPO, SMOKE, run_bundle
from tests.integration.test_monailabel import LUNG, ML_ENV, OCT, _post

pytestmark = pytest.mark.slow

SUFFIX = "_uncertainty"


@dataclass
class Plant:
    """One bundle's planted datastore: study id -> file; which one is ambiguous; which are labelled."""

    bundle: str
    weights: Path
    sure: dict[str, Path] = field(default_factory=dict)
    ambiguous: tuple[str, Path] | None = None
    labelled: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # id -> (image, label file)
    unreadable: dict[str, Path] = field(default_factory=dict)


def _bundle_probs(bundle: str, weights: Path, image: Path, overrides: dict) -> torch.Tensor:
    """The bundle's plain prediction in the main environment (its preprocessing and network, no augmentation)."""
    from monai.bundle import ConfigParser

    b = REPO / "bundles" / bundle
    files = [str(b / "configs" / "inference.yaml")]
    if (b / "configs" / "monailabel_inference.yaml").is_file():
        files.append(str(b / "configs" / "monailabel_inference.yaml"))
    parser = ConfigParser(ConfigParser.load_config_files(files))
    parser["bundle_root"] = str(b)
    parser["device"] = "$torch.device('cpu')"
    for k, v in overrides.items():
        parser[k] = v
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    x = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"]
    with torch.no_grad():
        return torch.softmax(net(torch.as_tensor(x)[None]), 1)[0]


def _blend(a: Path, b: Path, out: Path, weight: float = 0.5) -> Path:
    """``weight * a + (1 - weight) * b``, on the common part of two grayscale images."""
    from PIL import Image

    x, y = (np.asarray(Image.open(p).convert("L"), np.float32) for p in (a, b))
    h, w = min(x.shape[0], y.shape[0]), min(x.shape[1], y.shape[1])
    Image.fromarray(np.round(weight * x[:h, :w] + (1 - weight) * y[:h, :w]).astype(np.uint8)).save(out)
    return out


OCT_TRAIN = {"arch": "resnet18", "image_size": 64, "num_epochs": 20, "learning_rate": 2e-3, "batch_size": 8,
             "val_interval": 20}


def _entropy(probs: torch.Tensor) -> float:
    return float(-(probs.clamp_min(1e-8) * probs.clamp_min(1e-8).log()).sum())


def _oct_plant(tmp: Path, request) -> Plant:
    """OCT: B-scans the trained model calls right with an entropy under 0.1 nats (probability above about 0.98),
    and a blend of two of them from different classes, weighted where the model is least sure (a plain 50/50
    blend is often called confidently as one of the two classes, or as a third)."""
    from medplugin.data.oct2017 import CLASSES
    from medplugin.data.synthetic.oct import make_oct2017_demo

    root = Path(make_oct2017_demo(tmp / "oct_demo", train_patients=6, test_patients=1, images_per_patient=3,
                                  size=(64, 80), seed=1)["root"])
    ckpt = tmp / "oct_models"
    run_bundle(OCT, "train.yaml", SMOKE, dataset_dir=root, ckpt_dir=ckpt, output_dir=tmp / "oct_train", **OCT_TRAIN)
    weights = ckpt / "model.pt"
    settings = {k: OCT_TRAIN[k] for k in ("arch", "image_size")}
    sure: dict[str, list[Path]] = {}
    for img in sorted(root.glob("*/*/*.jpeg")):
        probs = _bundle_probs(OCT, weights, img, settings)
        if _entropy(probs) < 0.1 and CLASSES[int(probs.argmax())] == img.parent.name:
            sure.setdefault(img.parent.name, []).append(img)
    classes = sorted(sure, key=lambda c: -len(sure[c]))
    assert len(classes) >= 2 and len(sure[classes[1]]) >= 2, f"the trained model is sure of too little: {sure}"
    a, b = classes[0], classes[1]
    plant = Plant(OCT, weights)
    for img in sure[a][1:3] + sure[b][1:2]:
        plant.sure[f"sure__{img.stem}"] = img
    weight, ambiguity = max(((w, _entropy(_bundle_probs(OCT, weights, _blend(sure[a][0], sure[b][0], tmp / "w.png", w),
                                                         settings)))
                             for w in np.linspace(0.1, 0.9, 17)), key=lambda t: t[1])
    assert ambiguity > 0.6, f"no blend of {a} and {b} leaves the model unsure (entropy {ambiguity:.3f} at best)"
    plant.ambiguous = (f"blend__{a}_{b}", _blend(sure[a][0], sure[b][0], tmp / "oct_blend.png", weight))
    # another blend, labelled: a labelled study is neither scored nor proposed
    label = tmp / "oct_label.txt"
    label.write_text(f"{a}\n")
    plant.labelled["labelled__blend"] = (_blend(sure[a][-1], sure[b][-1], tmp / "oct_blend2.png", weight), label)
    broken = tmp / "broken.jpeg"
    broken.write_bytes(b"not a JPEG image")
    plant.unreadable["broken__file"] = broken
    return plant


LUNG_TRAIN = {"image_size": 64, "num_epochs": 30, "learning_rate": 3e-3}


def _lung_plant(tmp: Path, request) -> Plant:
    """Lungs: demo radiographs, and one of them with a third of its contrast and heavy noise (the lung borders
    are hard to see: the model cannot be sure where they run)."""
    from PIL import Image

    from medplugin.data.synthetic.chest_xray import make_lung_seg_demo

    root = Path(make_lung_seg_demo(tmp / "lung_demo", n=12, size=64, seed=0)["root"])
    ckpt = tmp / "lung_models"
    run_bundle(LUNG, "train.yaml", SMOKE, dataset_dir=root, ckpt_dir=ckpt, output_dir=tmp / "lung_train", **LUNG_TRAIN)
    images = sorted((root / "CXR_png").glob("*.png"))
    plant = Plant(LUNG, ckpt / "model.pt")
    for img in images[1:4]:
        plant.sure[f"sure__{img.stem}"] = img
    pixels = np.asarray(Image.open(images[0]).convert("L"), np.float32)
    rng = np.random.default_rng(0)
    faint = pixels.mean() + (pixels - pixels.mean()) / 3 + rng.normal(0, 40, pixels.shape)
    out = tmp / "lung_faint_noisy.png"
    Image.fromarray(np.clip(faint, 0, 255).astype(np.uint8)).save(out)
    plant.ambiguous = ("faint__" + images[0].stem, out)
    # labelled: a fainter, noisier one still, with its lung mask (neither scored nor proposed)
    fainter = pixels.mean() + (pixels - pixels.mean()) / 6 + rng.normal(0, 60, pixels.shape)
    img = tmp / "lung_fainter.png"
    Image.fromarray(np.clip(fainter, 0, 255).astype(np.uint8)).save(img)
    lungs = [np.asarray(Image.open(root / "ManualMask" / side / images[0].name)) > 0
             for side in ("leftMask", "rightMask")]
    mask = tmp / "lung_fainter_mask.png"
    Image.fromarray((lungs[0] | lungs[1]).astype(np.uint8)).save(mask)
    plant.labelled["labelled__fainter"] = (img, mask)
    return plant


PLANTS = {OCT: _oct_plant, LUNG: _lung_plant}


@pytest.fixture(scope="module", params=[OCT, LUNG])
def server(request, tmp_path_factory):
    """A server with one bundle, its uncertainty strategy on, and that bundle's planted studies."""
    name = request.param
    py = monailabel.ensure_env(ML_ENV)
    tmp = tmp_path_factory.mktemp(f"al_{name}")
    plant = PLANTS[name](tmp, request)

    app = tmp / "app"
    cli = [sys.executable, "-m", "medplugin.cli", "monailabel-app", "--out", str(app), "--bundles", name,
           "--set", "num_workers=0", "--env", str(ML_ENV), "--bundles-dir", str(REPO / "bundles"),
           "--weights", f"{name}={plant.weights}"]
    proc = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    studies = tmp / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for sid, img in [*plant.sure.items(), plant.ambiguous, *plant.unreadable.items()]:
        shutil.copy(img, studies / f"{sid}{img.suffix}")
    for sid, (img, label) in plant.labelled.items():
        shutil.copy(img, studies / f"{sid}{img.suffix}")
        shutil.copy(label, studies / "labels" / "final" / f"{sid}{label.suffix}")

    port = free_port()
    env = monailabel.server_environment(ML_ENV)
    # MONAI Label's background scoring at start-up and after each request is turned off, so that what scores when is
    # the test's: the strategy on demand first, then /scoring in the server and in MONAI Label's background task
    env.update(OMP_NUM_THREADS="1", MONAI_LABEL_SESSION_PATH=str(tmp / "sessions"),
               MONAI_LABEL_AUTO_UPDATE_SCORING="false")
    cmd = monailabel.server_command(app, studies, [name], port=port, executable=str(py.parent / "monailabel"),
                                    conf={"uncertainty_models": name})
    log_path = tmp / "server.log"
    url = f"http://127.0.0.1:{port}"
    with running_server(cmd, f"{url}/info/", log_path, cwd=tmp, env=env, timeout=300):
        yield url, app, plant, log_path


def _scores(url: str, key: str) -> dict[str, dict]:
    listing = http_json(f"{url}/datastore/?output=all")
    return {sid: obj["image"]["info"].get(key) for sid, obj in listing["objects"].items()}


def test_the_next_study_to_label_is_the_most_uncertain(server):
    url, app, plant, log = server
    name = plant.bundle + SUFFIX
    info = http_json(f"{url}/info/")
    assert {name, "random", "first"} <= set(info["strategies"]) and name in info["scoring"]
    assert "test-time augmentation" in info["strategies"][name]["description"]  # no dropout in these networks

    # nothing is scored yet: the strategy scores the unlabelled studies on demand, then answers
    start = time.monotonic()
    status, body = _post(f"{url}/activelearning/{name}", {})
    first_call = time.monotonic() - start
    assert status == 200
    answer = json.loads(body)
    ambiguous_id = plant.ambiguous[0]
    scores = _scores(url, name)
    assert answer["id"] == ambiguous_id, (answer, scores, Path(log).read_text()[-4000:])
    assert Path(answer["path"]).name.startswith(ambiguous_id)

    # the datastore lists the planted studies and nothing else (not MONAI Label's own datastore_v2.json)
    planted = {*plant.sure, ambiguous_id, *plant.labelled, *plant.unreadable}
    assert set(scores) == planted
    # every unlabelled study has a score of the current model; the labelled one has none
    stamp = scores[ambiguous_id]["model"]
    model_pt = app / "model" / plant.bundle / "models" / "model.pt"
    assert stamp == f"{model_pt.stat().st_mtime_ns}:{model_pt.stat().st_size}"
    for sid in plant.labelled:
        assert scores[sid] is None
    sure = {sid: scores[sid]["score"] for sid in plant.sure}
    assert all(scores[sid]["model"] == stamp for sid in plant.sure)
    assert answer["uncertainty"] == pytest.approx(scores[ambiguous_id]["score"])
    assert scores[ambiguous_id]["score"] > max(sure.values())
    for sid in plant.unreadable:  # a file the bundle cannot read: an error entry, never proposed first
        assert "error" in scores[sid] and scores[sid]["model"] == stamp

    # asked again within the hour, it proposes the next study instead of the one just served
    status, body = _post(f"{url}/activelearning/{name}", {})
    second = json.loads(body)["id"]
    assert second == max(sure, key=sure.get)

    # /scoring finds every score current
    n_unlabelled = len(plant.sure) + 1 + len(plant.unreadable)
    summary = json.loads(_post(f"{url}/scoring/{name}?run_sync=true", {})[1])
    assert (summary["total"], summary["scored"], summary["skipped"]) == (n_unlabelled, 0, n_unlabelled)

    # a new model file (as /train writes) makes every score stale: MONAI Label's background scoring task (a
    # subprocess that loads the app) scores them again, with the same result for the same weights
    os.utime(model_pt, ns=(model_pt.stat().st_atime_ns, model_pt.stat().st_mtime_ns + 10**9))
    new_stamp = f"{model_pt.stat().st_mtime_ns}:{model_pt.stat().st_size}"
    status, _ = _post(f"{url}/scoring/{name}", {})
    assert status == 200
    deadline = time.monotonic() + 600
    while True:
        task = http_json(f"{url}/scoring/")
        if task["status"] not in ("SUBMITTED", "RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert task["status"] == "DONE", task
    while True:  # the server reloads the datastore file the task wrote
        rescored = _scores(url, name)
        assert set(rescored) == planted
        if all(rescored[sid]["model"] == new_stamp for sid in [*plant.sure, ambiguous_id, *plant.unreadable]):
            break
        assert time.monotonic() < deadline, rescored
        time.sleep(0.5)
    for sid in [*plant.sure, ambiguous_id]:  # a deterministic augmentation: the same scores
        assert rescored[sid]["score"] == pytest.approx(scores[sid]["score"], rel=1e-4, abs=1e-6)
    assert all("error" in rescored[sid] for sid in plant.unreadable)

    # forced, in the server: every unlabelled study again, the unreadable ones counted as failed
    summary = json.loads(_post(f"{url}/scoring/{name}?run_sync=true", {"force": True})[1])
    assert summary["total"] == n_unlabelled and summary["skipped"] == 0
    assert (summary["scored"], summary["failed"]) == (n_unlabelled - len(plant.unreadable), len(plant.unreadable))
    print(f"{plant.bundle}: ambiguous {scores[ambiguous_id]['score']:.4f}, sure {sure}, "
          f"first /activelearning (scoring {n_unlabelled} studies) {first_call:.1f} s")


def test_bad_conf_values_are_named():
    """``--conf`` mistakes stop the app with the key and the value (in the MONAI Label environment, no server)."""
    py = monailabel.ensure_env(ML_ENV)
    code = """
import json
from medplugin.tools.monailabel_activelearning import UncertaintyAppMixin

class Stock:  # what the stock app registers
    def init_strategies(self):
        return {"random": None}

    def init_scoring_methods(self):
        return {}

class App(UncertaintyAppMixin, Stock):
    def __init__(self, conf):
        self.conf, self.models = conf, {"a_classification": "/nonexistent/a_classification"}

out = [sorted(App({}).init_strategies()), sorted(App({}).init_scoring_methods())]
for conf in ({"uncertainty_models": "b_segmentation"}, {"uncertainty_models": "all", "uncertainty_method": "bayes"},
             {"uncertainty_models": "all", "uncertainty_passes": "many"},
             {"uncertainty_models": "all", "uncertainty_on_demand": "maybe"}):
    try:
        App(conf).init_strategies()
        out.append(None)
    except ValueError as e:
        out.append(str(e))
print(json.dumps(out))
"""
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out[:2] == [["random"], []]  # nothing added unless asked for
    assert out[2] == "--conf uncertainty_models: 'b_segmentation' is not among the app's models ['a_classification']"
    assert out[3] == "--conf uncertainty_method: expected one of ['auto', 'tta', 'dropout'], got 'bayes'"
    assert out[4] == "--conf uncertainty_passes: expected an integer, got 'many'"
    assert out[5] == "--conf uncertainty_on_demand: expected true or false, got 'maybe'"
