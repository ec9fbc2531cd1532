"""Our bundles in a real MONAI Label 0.8.5 server (stock ``monaibundle`` app), offline, on 127.0.0.1.

The MONAI Label environment (``.venv-monailabel``, git-ignored) is created on the first run (about 5 minutes
of pip) and reused after. Each bundle gets smoke-trained weights through the MONAI bundle runner, the app is
assembled with ``medplugin monailabel-app``, a studies folder of demo images (some labelled) is written, and
the server is started on a free port, asked ``/info/``, ``/infer/<bundle>`` and ``/train/<bundle>`` for every
bundle, and stopped. MONAI Label trains a model on every labelled study of its datastore, so before each
training the test leaves only that bundle's labels there (``DELETE`` / ``PUT /datastore/label``, as a viewer).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from medplugin.tools import monailabel
from medplugin.tools.review import free_port, http_json, running_server
from tests.bundles._runner import REPO, SMOKE, run_bundle

pytestmark = pytest.mark.slow

ML_ENV = REPO / ".venv-monailabel"  # the checkout's MONAI Label environment, whatever folder pytest runs from

OCT = "retina_oct_classification"
LUNG = "lung_xray_segmentation"
FUNDUS = "retina_fundus_classification"
KNEE_SEG = "knee_mri_segmentation"
CHEST = "chest_xray_classification"
KNEE_CLS = "knee_mri_classification"


@dataclass
class Case:
    """One bundle in the app: smoke weights, labelled and unlabelled studies."""

    name: str
    kind: str  # classification | segmentation
    weights: Path
    labelled: list[tuple[Path, object]] = field(default_factory=list)  # (image, class name or mask file)
    unlabelled: list[Path] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    multi_label: bool = False  # independent findings: sigmoid scores, a label file lists the findings present


def _oct_case(tmp: Path, request) -> Case:
    ckpt, _ = request.getfixturevalue("oct_smoke_run")
    oct_demo = request.getfixturevalue("oct_demo")
    classes = ["CNV", "DME", "DRUSEN", "NORMAL"]
    labelled = [(p, c) for c in classes for p in sorted((oct_demo / "train" / c).glob("*.jpeg"))[:4]]
    unlabelled = [sorted((oct_demo / "test" / c).glob("*.jpeg"))[0] for c in classes]
    from tests.bundles._gate import colour_photograph

    unlabelled.append(colour_photograph(tmp / "oct_input" / "holiday_photo.jpg"))  # not a B-scan: the gate flags it
    return Case(OCT, "classification", ckpt / "model.pt", labelled, unlabelled, classes)


def _lung_case(tmp: Path, request) -> Case:
    from PIL import Image

    from medplugin.data.synthetic.chest_xray import make_lung_seg_demo

    root = Path(make_lung_seg_demo(tmp / "lung_demo", n=12, size=64, seed=0)["root"])
    ckpt = tmp / "lung_models"
    run_bundle(LUNG, "train.yaml", SMOKE, dataset_dir=root, ckpt_dir=ckpt, output_dir=tmp / "lung_train")
    images = sorted((root / "CXR_png").glob("*.png"))
    masks = tmp / "lung_masks"
    masks.mkdir()
    labelled = []
    for img in images[:8]:  # one label map per image, as MONAI Label stores it: 0 background, 1 lung
        lungs = [np.asarray(Image.open(root / "ManualMask" / side / img.name)) > 0
                 for side in ("leftMask", "rightMask")]
        Image.fromarray((lungs[0] | lungs[1]).astype(np.uint8)).save(masks / img.name)
        labelled.append((img, masks / img.name))
    from pydicom.data import get_testdata_file

    unlabelled = [*images[8:10], Path(get_testdata_file("RG1_UNCR.dcm"))]  # and a real DICOM radiograph
    return Case(LUNG, "segmentation", ckpt / "model.pt", labelled, unlabelled, ["background", "lung"])


def _fundus_case(tmp: Path, request) -> Case:
    import csv

    from medplugin.data.synthetic.fundus import make_eyepacs_demo

    root = tmp / "fundus_demo" / "eyepacs"
    make_eyepacs_demo(root, n_patients=8, size=64, seed=0, n_test_patients=3)
    ckpt = tmp / "fundus_models"
    run_bundle(FUNDUS, "train.yaml", SMOKE, dataset_dir=root, ckpt_dir=ckpt, output_dir=tmp / "fundus_train")
    classes = ["non-referable", "referable"]  # the bundle's default task: DR grade >= 2
    rows = list(csv.DictReader((root / "trainLabels.csv").open()))
    labelled = [(root / "train" / f"{r['image']}.jpeg", classes[int(r["level"]) >= 2]) for r in rows]
    unlabelled = sorted((root / "test").glob("*.jpeg"))[:2]
    return Case(FUNDUS, "classification", ckpt / "model.pt", labelled, unlabelled, classes)


def _knee_seg_case(tmp: Path, request) -> Case:
    from medplugin.data.synthetic.knee import make_knee_nifti_demo

    root = Path(make_knee_nifti_demo(tmp / "knee_demo", n=10, shape=(16, 32, 32), seed=1, exams_per_patient=2)["root"])
    ckpt = tmp / "knee_models"
    run_bundle(KNEE_SEG, "train.yaml", SMOKE, dataset_dir=root, ckpt_dir=ckpt, output_dir=tmp / "knee_train",
               patch_slices=16)
    exams = sorted((root / "exams").glob("*.nii.gz"))
    labelled = [(e, root / "masks" / e.name) for e in exams[:8]]
    return Case(KNEE_SEG, "segmentation", ckpt / "model.pt", labelled, exams[8:], ["background", "acl"])


def _chest_case(tmp: Path, request) -> Case:
    import csv

    from medplugin.data.chestxray14 import FINDINGS
    from medplugin.data.synthetic.chest_xray import make_chestxray14_demo

    demo = make_chestxray14_demo(tmp / "cxr_demo" / "nih", n_patients=10, size=64, seed=0)
    root = Path(demo["root"])
    ckpt = tmp / "cxr_models"
    run_bundle(CHEST, "train.yaml", SMOKE, dataset_dir=root, ckpt_dir=ckpt, output_dir=tmp / "cxr_train",
               val_fraction=0.3)
    images = {p.name: p for p in root.glob("images_*/images/*.png")}
    rows = sorted(csv.DictReader(Path(demo["csv"]).open()), key=lambda r: r["Image Index"])
    labelled = [(images[r["Image Index"]], r["Finding Labels"]) for r in rows[:8]]  # "Effusion|Mass", "No Finding"
    unlabelled = [images[r["Image Index"]] for r in rows[8:10]]
    # and two real radiographs as DICOM (uncompressed and JPEG 2000), read on the server's pydicom 2
    from pydicom.data import get_testdata_file

    unlabelled += [Path(get_testdata_file(n)) for n in ("RG1_UNCR.dcm", "RG1_J2KR.dcm")]
    return Case(CHEST, "classification", ckpt / "model.pt", labelled, unlabelled, list(FINDINGS), multi_label=True)


def _knee_cls_case(tmp: Path, request) -> Case:
    from medplugin.data.knee import ACL_CLASSES
    from medplugin.data.synthetic.knee import make_knee_nifti_demo

    demo = make_knee_nifti_demo(tmp / "knee_cls_demo", n=10, shape=(8, 32, 32), seed=2)
    root = Path(demo["root"])
    ckpt = tmp / "knee_cls_models"
    run_bundle(KNEE_CLS, "train.yaml", SMOKE, dataset_dir=root, ckpt_dir=ckpt, output_dir=tmp / "knee_cls_train",
               num_slices=8)
    exams = sorted((root / "exams").glob("*.nii.gz"))
    labelled = [(e, ACL_CLASSES[demo["labels"][_stem(e)]]) for e in exams[:8]]  # "partial_rupture", ...
    return Case(KNEE_CLS, "classification", ckpt / "model.pt", labelled, exams[8:], list(ACL_CLASSES))


# bundle name -> builder of its Case; a bundle joins the test once it has an inference config
CASES = {OCT: _oct_case, LUNG: _lung_case, FUNDUS: _fundus_case, KNEE_SEG: _knee_seg_case, CHEST: _chest_case,
         KNEE_CLS: _knee_cls_case}
PRESENT = [n for n in CASES if n in monailabel.available_bundles(REPO / "bundles")]


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _suffix(path: Path) -> str:
    return path.name[len(_stem(path)):]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _label_file(case: Case, img: Path, label, folder: Path) -> Path:
    """The label file of one study: a text file naming the class, or the mask file."""
    folder.mkdir(parents=True, exist_ok=True)
    sid = f"{case.name}__{_stem(img)}"
    if case.kind == "classification":
        out = folder / f"{sid}.txt"
        out.write_text(f"{label}\n")
    else:
        out = folder / f"{sid}{_suffix(Path(label))}"
        shutil.copy(label, out)
    return out


def _request(url: str, method: str, body: bytes = b"", content_type: str = "application/json",
             timeout: float = 600) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def _post(url: str, data: dict | None = None, timeout: float = 600) -> tuple[int, bytes]:
    return _request(url, "POST", json.dumps(data).encode() if data is not None else b"", timeout=timeout)


def _put_label(url: str, image_id: str, label: Path) -> None:
    """PUT /datastore/label: submit a finished label, as a viewer does (multipart form)."""
    boundary = "medplugin" + hashlib.md5(label.read_bytes()).hexdigest()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{}}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"label\"; filename=\"{label.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + label.read_bytes()
    body += f"\r\n--{boundary}--\r\n".encode()
    status, _ = _request(f"{url}/datastore/label?image={image_id}&tag=final", "PUT", body,
                         f"multipart/form-data; boundary={boundary}")
    assert status == 200


def _use_labels_of(url: str, cases: dict, name: str, state: dict, uploads: Path) -> None:
    """Make ``name``'s labels the datastore's final labels: remove the others', submit its own (the API)."""
    if state["labelled"] == name:
        return
    other = cases[state["labelled"]]
    for img, _ in other.labelled:
        status, _ = _request(f"{url}/datastore/label?id={other.name}__{_stem(img)}&tag=final", "DELETE")
        assert status == 200
    for img, label in cases[name].labelled:
        _put_label(url, f"{name}__{_stem(img)}", _label_file(cases[name], img, label, uploads))
    state["labelled"] = name
    # the local datastore also follows the studies folder with a file watcher, which may apply a removal a
    # moment after the DELETE answered: wait (bounded) until the listing shows exactly the new labels
    want = {f"{name}__{_stem(img)}" for img, _ in cases[name].labelled}
    deadline = time.monotonic() + 30
    while True:
        listing = http_json(f"{url}/datastore/?output=all")
        labelled = {k for k, v in listing["objects"].items() if v.get("labels", {}).get("final")}
        if labelled == want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert labelled == want


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """A running server: (base url, app dir, studies dir, {name: Case}, log); stopped after the module."""
    py = monailabel.ensure_env(ML_ENV)  # created once (minutes), reused after
    tmp = tmp_path_factory.mktemp("monailabel")
    cases = {n: CASES[n](tmp, request) for n in PRESENT}

    app = tmp / "app"
    cli = [sys.executable, "-m", "medplugin.cli", "monailabel-app", "--out", str(app), "--bundles", ",".join(cases),
           "--set", "num_workers=0", "--set", "batch_size=4", "--set", "cam_images=2",
           "--studies", str(tmp / "studies"), "--env", str(ML_ENV), "--bundles-dir", str(REPO / "bundles")]
    for n, c in cases.items():
        cli += ["--weights", f"{n}={c.weights}"]
    proc = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert "monailabel start_server" in line and f"--app {app}" in line and "--conf sam2 false" in line
    assert f"--conf models {','.join(cases)}" in line and "--conf zoo_source github" in line

    studies = tmp / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for n, c in cases.items():
        for img, _ in c.labelled:
            shutil.copy(img, studies / f"{n}__{_stem(img)}{_suffix(img)}")
        for img in c.unlabelled:
            shutil.copy(img, studies / f"{n}__test__{_stem(img)}{_suffix(img)}")
    # MONAI Label trains every model on all labelled studies: one bundle's labels at a time. The first bundle's
    # are written as files in the documented layout; the train test swaps them through the datastore API.
    first = cases[PRESENT[0]]
    for img, label in first.labelled:
        _label_file(first, img, label, studies / "labels" / "final")
    state = {"labelled": PRESENT[0]}

    port = free_port()
    env = monailabel.server_environment(ML_ENV)
    env.update(OMP_NUM_THREADS="1", MONAI_LABEL_SESSION_PATH=str(tmp / "sessions"))
    cmd = monailabel.server_command(app, studies, list(cases), port=port,
                                    executable=str(py.parent / "monailabel"))
    url = f"http://127.0.0.1:{port}"
    with running_server(cmd, f"{url}/info/", tmp / "server.log", cwd=tmp, env=env, timeout=300) as srv:
        yield url, app, studies, cases, tmp / "server.log", state
    assert srv.poll() is not None


def test_info_lists_every_bundle_with_its_labels(server):
    url, _, _, cases, _, _ = server
    info = http_json(f"{url}/info/")
    assert set(cases) <= set(info["models"]) and set(cases) <= set(info["trainers"])
    for n, c in cases.items():
        assert info["models"][n]["type"] == c.kind
        if c.kind == "classification":
            assert info["models"][n]["labels"] == {name.lower(): i for i, name in enumerate(c.class_names)}


def _expected(app: Path, name: str, image: Path, multi_label: bool = False) -> np.ndarray:
    """What the bundle computes in the main environment: its preprocessing, inferer and network, the temperature
    stored in model.json, then softmax (sigmoid for a multi-label bundle)."""
    from monai.bundle import ConfigParser

    from medplugin.metrics.stored import stored_temperature

    b = app / "model" / name
    parser = ConfigParser()
    parser.read_config(str(b / "configs" / "inference.json"))
    parser["bundle_root"] = str(b)
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(b / "models" / "model.pt", weights_only=True))
    net.eval()
    x = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"]
    inferer = parser.get_parsed_content("inferer")
    with torch.no_grad():
        logits = inferer(torch.as_tensor(x)[None], net)
    logits = logits / torch.as_tensor(stored_temperature(b / "models" / "model.json"), dtype=logits.dtype)
    return (torch.sigmoid(logits) if multi_label else torch.softmax(logits, 1))[0]


def _check_seg_answer(body: bytes, sources: Path | list[Path], out: Path, segments: list[str],
                      model: str) -> np.ndarray:
    """An answer that must be a binary DICOM SEG on ``sources`` (one radiograph, or a series' files): dciodvfy
    finds no error, it files with the source's study and patient in a series of its own, names the bundle and
    ``segments``, references every source instance; returns its frames re-assembled on the sources (pydicom
    alone: :func:`medplugin.io.dicom_results.read_segmentation_mask`)."""
    import pydicom

    from medplugin.io.dicom_results import read_segmentation_mask
    from tests.io._dicom_helpers import dciodvfy

    assert body[128:132] == b"DICM"
    out.write_bytes(body)
    seg = pydicom.dcmread(out)
    files = sources if isinstance(sources, list) else [sources]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY" and int(seg.NumberOfFrames) == len(files) * len(segments)
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.SeriesInstanceUID != first.SeriesInstanceUID
    assert seg.PatientID == first.PatientID and seg.PatientName == first.PatientName
    assert [s.SegmentLabel for s in seg.SegmentSequence] == segments
    assert seg.ManufacturerModelName == model
    errors, _ = dciodvfy(out)
    assert errors == [], errors
    refs = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert refs == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    return read_segmentation_mask(out, [str(f) for f in files] if isinstance(sources, list) else str(sources))


@pytest.mark.parametrize("name", PRESENT)
def test_infer_answers_for_every_bundle(server, name):
    url, app, studies, cases, _, _ = server
    c = cases[name]
    for img in c.unlabelled:
        sid = f"{name}__test__{_stem(img)}"
        if c.kind == "classification":  # the predicted label with a score for every class
            status, body = _post(f"{url}/infer/{name}?image={sid}&output=json")
            assert status == 200
            pred = json.loads(body)["prediction"]
            assert [p["label"] for p in pred] == [n.lower() for n in c.class_names]
            scores = np.array([p["score"] for p in pred])
            assert ((scores >= 0) & (scores <= 1)).all()
            if not c.multi_label:  # one class of several: the scores sum to 1
                assert scores.sum() == pytest.approx(1.0, abs=1e-4)
            np.testing.assert_allclose(scores, _expected(app, name, img, c.multi_label).numpy(), atol=1e-4)
            for p in pred:  # issue 15: each class's call at the operating point stored in model.json
                assert 0.0 <= p["threshold"] <= 1.0 and p["call"] == int(p["score"] >= p["threshold"]), p
            # issue 16: the input gate's verdict, as in predictions.csv (gate: warn, so the photograph is scored)
            answer = json.loads(body)
            if img.name == "holiday_photo.jpg":
                assert answer["in_scope"] is False and not answer["refused"], answer
                assert re.fullmatch(r"a colour image \(channels differ by [0-9.]+ on average\), expected grayscale",
                                    answer["out_of_scope_reason"]), answer
            else:
                assert answer["in_scope"] is True and answer["out_of_scope_reason"] == "", (img.name, answer)
        elif img.suffix in (".png", ".dcm"):  # the mask on the radiograph's pixel grid: a PNG, or a DICOM SEG
            status, body = _post(f"{url}/infer/{name}?image={sid}&output=image")
            assert status == 200
            if img.suffix == ".png":
                from PIL import Image

                assert body[:8] == b"\x89PNG\r\n\x1a\n"
                mask = np.asarray(Image.open(io.BytesIO(body)))
                with Image.open(img) as im:
                    assert mask.shape == (im.height, im.width)
            else:  # issue 16: a valid binary DICOM SEG on the study's radiograph, by medplugin's SEG writer
                mask = _check_seg_answer(body, studies / f"{sid}.dcm", studies.parent / "answer_seg.dcm",
                                         ["Lungs"], name)
            assert mask.dtype == np.uint8
            assert set(np.unique(mask)) <= set(range(len(c.class_names)))
            probs = _expected(app, name, img)
            expected = torch.nn.functional.interpolate(probs.argmax(0)[None, None].float(), size=mask.shape,
                                                       mode="nearest")[0, 0].numpy()
            assert (mask == expected).mean() >= 0.99
        else:  # a NIfTI mask on the exam's voxel grid (shape and affine of the exam file)
            import nibabel as nib

            from medplugin.io.mrnet import _sagittal_permutation

            status, body = _post(f"{url}/infer/{name}?image={sid}&output=image")
            assert status == 200
            (studies.parent / "answer.nii.gz").write_bytes(body)
            mask, exam = nib.load(studies.parent / "answer.nii.gz"), nib.load(img)
            assert mask.shape == exam.shape and np.allclose(mask.affine, exam.affine, atol=1e-4)
            data = np.asarray(mask.dataobj)
            assert mask.get_data_dtype() == np.uint8 and set(np.unique(data)) <= set(range(len(c.class_names)))
            # the loader reads the exam slices-first: the prediction there is the mask in that order
            expected = _expected(app, name, img).argmax(0).numpy()
            assert (data.transpose(_sagittal_permutation(exam.affine)) == expected).mean() >= 0.99


@pytest.mark.parametrize("name", PRESENT)
def test_train_one_epoch_updates_the_model(server, name):
    url, app, studies, cases, log, state = server
    c = cases[name]
    _use_labels_of(url, cases, name, state, studies.parent / "label_uploads")
    models = app / "model" / name / "models"
    before = _sha(models / "model.pt")
    old_state = torch.load(models / "model.pt", weights_only=True)
    probe = f"{name}__test__{_stem(c.unlabelled[0])}"
    answer_before = _post(f"{url}/infer/{name}?image={probe}&output=json")[1] if c.kind == "classification" else b""

    try:
        status, _ = _post(f"{url}/train/{name}?run_sync=true",
                          {"max_epochs": 1, "val_split": 0.25, "multi_gpu": False, "device": "cpu"})
    except urllib.error.HTTPError as e:
        raise AssertionError(f"/train/{name}: {e}\n{log.read_text()[-6000:]}") from e
    assert status == 200

    assert _sha(models / "model.pt") != before
    new_state = torch.load(models / "model.pt", weights_only=True)
    assert new_state.keys() == old_state.keys()
    assert any(not torch.equal(new_state[k], old_state[k]) for k in new_state if new_state[k].is_floating_point())
    assert len(list(models.glob("model.*.pt"))) == 1  # the earlier weights are kept beside it

    # the run trained on the labelled studies (classes read from the label files)
    run = max((app / "model" / name / "runs").glob("train_*"), key=lambda p: p.stat().st_mtime)
    dl = json.loads((run / "datalist.json").read_text())
    assert len(dl["training"]) + len(dl["validation"]) == len(c.labelled)
    assert len(dl["validation"]) == len(c.labelled) // 4
    assert all(Path(e["image"]).parent == studies for e in dl["training"])
    if c.kind == "segmentation" or name in (OCT, FUNDUS):  # the label files as MONAI Label gave them
        assert all(Path(e["label"]).parent == studies / "labels" / "final" for e in dl["training"])
    else:  # the labels read from those files before training (class weights, multi-hot vectors)
        truth = {f"{name}__{_stem(img)}": lab for img, lab in c.labelled}
        for e in dl["training"]:
            want = truth[_stem(Path(e["image"]))]
            if c.multi_label:
                present = {c.class_names[i] for i, v in enumerate(e["label"]) if v == 1}
                assert present == (set() if want == "No Finding" else set(want.split("|")))
            else:
                assert e["label"] == c.class_names.index(want)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert len(acc.Scalars("train_loss")) == -(-len(dl["training"]) // 4)  # one point per iteration, batch 4

    if c.kind == "classification":  # the server answers with the new weights
        scores = [[p["score"] for p in json.loads(a)["prediction"]]
                  for a in (answer_before, _post(f"{url}/infer/{name}?image={probe}&output=json")[1])]
        assert not np.allclose(scores[0], scores[1], atol=1e-6)


def test_environment_uses_the_main_torch_and_its_own_pydicom():
    """The MONAI Label env links to this environment's torch (no second 5.5 GB copy), while its own pydicom 2
    (for pydicom-seg) and NumPy shadow the main environment's."""
    py = monailabel.ensure_env(ML_ENV)
    code = ("import json, torch, torchvision, pydicom, numpy, sysconfig, medplugin; "
            "nms = torchvision.ops.nms(torch.tensor([[0, 0, 1, 1.], [0, 0, 1, 1.]]), torch.tensor([1., .5]), .5); "
            "print(json.dumps([torch.__file__, torch.__version__, pydicom.__version__, numpy.__file__, "
            "nms.tolist(), sysconfig.get_paths()['purelib'], medplugin.__file__]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # medplugin through the env's own link
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    torch_file, version, pydicom_version, numpy_file, nms, site, medplugin_file = json.loads(
        out.stdout.strip().splitlines()[-1])
    assert Path(torch_file).resolve() == Path(torch.__file__).resolve() and version == torch.__version__
    assert not (Path(site) / "torch").exists()
    assert int(pydicom_version.split(".")[0]) < 3
    assert Path(numpy_file).resolve().is_relative_to(Path(site).resolve())
    assert nms == [0]
    # the server runs the caller's medplugin package (through the env's link), not a copy or another checkout
    assert Path(medplugin_file).resolve() == monailabel.imported_medplugin() / "__init__.py"


ANSWER_RULES = r"""
import json, sys
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType
from medplugin.io.dicom_results import ModelInfo, read_segmentation_mask
from medplugin.tools.monailabel_dicom import (SERIES_KEY, DicomSegInferTask, answer_mask, request_sources,
                                              write_answer_seg)
cr, nii, folder, out = sys.argv[1:5]
lungs = [{"label": "Lungs", "property_type": ["39607008", "SCT", "Lung"]}]
task = object.__new__(DicomSegInferTask)  # only the rules, no bundle loaded
def why(data, kind=InferType.SEGMENTATION, **config):
    task.type, task.bundle_config = kind, ConfigParser({"segments": lungs, "dicom_output": "auto", **config})
    return task._seg_wanted(data)
res = {"why": {
    "plain": why({}), "dcm": why({"result_extension": ".dcm"}), "nifti": why({"result_extension": ".nii.gz"}),
    "label_info": why({"label_info": [{"name": "lung"}]}), "save_label": why({"save_label": True}),
    "off": why({}, dicom_output=False), "no_segments": why({}, segments=[]),
    "classification": why({}, InferType.CLASSIFICATION)}}
res["sources"] = {"cr": request_sources({"image_path": cr}), "nii": request_sources({"image_path": nii}),
                  "series": request_sources({"image_path": nii, SERIES_KEY: folder}),
                  "none": request_sources({})}
affine = np.diag([2.0, 3.0, 1.0, 1.0])
plain, from_meta = answer_mask({"pred": MetaTensor(torch.ones(2, 3), affine=torch.eye(4))}, "pred"), answer_mask(
    {"pred": torch.ones(2, 3), "pred_meta_dict": {"affine": affine}}, "pred")
res["affines"] = [plain[1].tolist(), from_meta[1].tolist(), from_meta[0].shape]
import pydicom
rows, cols = (int(v) for v in (lambda d: (d.Rows, d.Columns))(pydicom.dcmread(cr, stop_before_pixels=True)))
xy = (np.random.default_rng(0).random((cols, rows)) > 0.5).astype(np.uint8)  # ITK's (x, y) order
model = ModelInfo("lung_xray_segmentation", "0.3.0")
res["xy"] = bool((read_segmentation_mask(write_answer_seg([cr], xy, None, lungs, model, out), cr) == xy.T).all())
res["xy_channel"] = bool((read_segmentation_mask(write_answer_seg([cr], xy[None], None, lungs, model, out), cr)
                          == xy.T).all())
try:
    write_answer_seg([cr], np.zeros((2, cols, rows)), None, lungs, model, out)
except ValueError as e:
    res["volume_on_one_image"] = str(e)
print(json.dumps(res))
"""


def test_dicom_seg_answers_only_where_a_seg_is_asked_for(tmp_path):
    """medplugin.tools.monailabel_dicom in the MONAI Label environment: a segmentation answer for a DICOM source is a
    SEG unless the request asks for something else (another result_extension, MONAI Label's own dicom_seg output, a
    label to store) or the bundle opts out; the sources are the .dcm study, or the series folder the app mixin names;
    a one-image mask is taken in ITK's (x, y) order, as MONAI Label's writer takes it."""
    import pydicom
    from pydicom.data import get_testdata_file

    py = monailabel.ensure_env(ML_ENV)
    cr = get_testdata_file("RG1_UNCR.dcm")
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(cr, folder / "1.2.3.dcm")
    nii = tmp_path / "1.2.3.nii.gz"
    nii.write_bytes(b"\x1f\x8b")  # a NIfTI (by its name; never read)
    script = tmp_path / "rules.py"
    script.write_text(ANSWER_RULES)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # medplugin through the env's own link
    proc = subprocess.run([str(py), str(script), cr, str(nii), str(folder), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["why"] == {"plain": "", "dcm": "", "nifti": "result_extension .nii.gz asked for",
                          "label_info": "MONAI Label's own dicom_seg output asked for",
                          "save_label": "the answer is saved as the study's label",
                          "off": "the bundle's dicom_output is false",
                          "no_segments": "the bundle config has no segments",
                          "classification": "not a segmentation"}
    assert res["sources"] == {"cr": [cr], "nii": None, "series": [str(folder / "1.2.3.dcm")], "none": None}
    assert res["affines"] == [np.eye(4).tolist(), np.diag([2.0, 3.0, 1.0, 1.0]).tolist(), [2, 3]]
    assert res["xy"] and res["xy_channel"]
    src = pydicom.dcmread(cr, stop_before_pixels=True)
    want = f"a one-image source needs a 2-D mask, got shape (2, {src.Columns}, {src.Rows})."
    assert res["volume_on_one_image"] == want
