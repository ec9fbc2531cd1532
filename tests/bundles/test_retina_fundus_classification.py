"""The fundus DR bundle, run through MONAI's bundle runner on tiny synthetic EyePACS-layout data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bundles._contract import check_exports, check_torchrun
from tests.bundles._decisions import check_evaluation, check_model_json
from tests.bundles._runner import EVALUATE, REPO, SMOKE, bundle_dir, run_bundle

NAME = "retina_fundus_classification"
B = bundle_dir(NAME)
CLASSES = ["non-referable", "referable"]


@pytest.fixture(scope="module")
def trained(fundus_demo, tmp_path_factory):
    """One smoke training run shared by the tests below: (ckpt_dir, train output_dir)."""
    tmp = tmp_path_factory.mktemp("fundus_bundle")
    ckpt, out = tmp / "models", tmp / "train"
    run_bundle(NAME, "train.yaml", SMOKE, dataset_dir=fundus_demo, ckpt_dir=ckpt, output_dir=out)
    return ckpt, out


def _scalars(logdir: Path) -> tuple[set[str], set[str]]:
    """(scalar tags, image tags) of a TensorBoard folder, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"]), set(acc.Tags()["images"])


def test_train_writes_checkpoint_metadata_and_tensorboard(trained):
    ckpt, out = trained
    state = torch.load(ckpt / "model.pt", weights_only=True)
    assert state["fc.weight"].shape == (2, 2048) and state["conv1.weight"].shape == (64, 3, 7, 7)
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["arch"] == "resnet50" and meta["image_size"] == 32 and meta["class_names"] == CLASSES
    assert meta["task"] == "referable" and meta["preprocessing_mode"] == "enhanced" and meta["in_channels"] == 3
    check_model_json(ckpt, CLASSES)  # issue 15: temperature and operating points chosen on validation
    dl = json.loads((out / "datalist.json").read_text())
    patients = [{e["patient_id"] for e in dl[s]} for s in ("training", "validation", "test")]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])
    assert all(e["label"] == int(e["grade"] >= 2) for es in dl.values() for e in es)

    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    scalars, images = _scalars(out / "tensorboard")
    assert {"train_loss", "learning_rate", "val_accuracy", "val_auc", "val_pr_auc", "val_sensitivity",
            "val_specificity", "val_operating_sensitivity", "val_operating_specificity", "perf/images_per_s",
            "perf/data_wait_fraction"} <= scalars
    assert any(t.startswith("gradcam/") for t in images)


def test_grading_task_on_annotated_candidate_channels(fundus_demo, tmp_path):
    """One override each: 5-grade task (key metric kappa) on RGB + 2 lesion-candidate channels."""
    ckpt, out = tmp_path / "models", tmp_path / "train"
    run_bundle(NAME, "train.yaml", SMOKE, dataset_dir=fundus_demo, ckpt_dir=ckpt, output_dir=out, arch="resnet18",
               task="grade", preprocessing_mode="annotated", annotate="channels")
    state = torch.load(ckpt / "model.pt", weights_only=True)
    assert state["conv1.weight"].shape[1] == 5 and state["fc.weight"].shape[0] == 5
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["in_channels"] == 5 and len(meta["normalization"][0]) == 5
    scalars, _ = _scalars(out / "tensorboard")
    assert {"val_kappa", "val_auc", "val_accuracy"} <= scalars


def test_evaluate_writes_metrics_plots_and_misclassified_cams(trained, fundus_demo, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "eval"
    run_bundle(NAME, EVALUATE, SMOKE, dataset_dir=fundus_demo, ckpt_dir=ckpt, output_dir=out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 6 and m["task"] == "referable"
    labels = [int(r["level"]) >= 2 for r in csv.DictReader((fundus_demo / "testLabels.csv").open())]
    assert m["referable_prevalence"] == pytest.approx(np.mean(labels))
    assert set(m["per_class"]) == set(CLASSES) and np.asarray(m["confusion_matrix"]).sum() == 6
    for k in ("auc", "pr_auc", "sensitivity", "specificity"):
        assert np.isfinite(m[k]), k
    # issue 15: referable DR is called at the point chosen on validation (model.json), none chosen on these images
    stored = json.loads((ckpt / "model.json").read_text())["operating_points"]["referable"]
    assert m["threshold"] == stored["threshold"] and m["threshold_chosen_on"] == "validation (model.json)"
    assert not {"target_specificity", "operating_threshold", "operating_sensitivity"} & set(m)
    scores = np.array([float(r["prob_referable"]) for r in csv.DictReader((out / "predictions.csv").open())])
    truth = np.array([r["true_referable"] == "1" for r in csv.DictReader((out / "predictions.csv").open())])
    assert m["sensitivity"] == pytest.approx((scores[truth] >= stored["threshold"]).mean(), abs=1e-5)
    check_evaluation(out, CLASSES, ["accuracy", "auc", "sensitivity", "specificity"])
    for png in ("confusion_matrix.png", "roc.png", "pr.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cams = sorted((out / "misclassified_gradcam").glob("*.png")) if m["misclassified"] else []
    assert len(cams) == len(m["misclassified"])


def _write_image(path: Path, mode: str, src: Path) -> None:
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        if mode == "L":
            im.convert("L").save(path)
        else:
            rgba = im.convert("RGBA")
            rgba.putalpha(200)
            rgba.save(path)


def test_inference_on_photographs_reports_the_corrupt_one_and_converts_gray_and_rgba(trained, fundus_demo, tmp_path):
    from matplotlib import cbook
    from PIL import Image

    ckpt, _ = trained
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    good = sorted((fundus_demo / "test").glob("*.jpeg"))
    shutil.copy(good[0], src / "a.jpeg")
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), src / "sub" / "photo.jpg")  # real RGB photo
    (src / "broken.jpeg").write_bytes(good[0].read_bytes()[:300])
    _write_image(src / "gray.png", "L", good[1])
    _write_image(src / "rgba.png", "RGBA", good[2])
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "inf"
    run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=ckpt, output_dir=out)
    rows = {Path(r["file"]).name: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert sorted(rows) == ["a.jpeg", "broken.jpeg", "gray.png", "photo.jpg", "rgba.png"]
    bad = rows.pop("broken.jpeg")
    assert bad["prediction"] == "" and "broken.jpeg" in bad["error"] and "truncated" in bad["error"]
    for r in rows.values():
        assert r["error"] == "" and r["prediction"] in CLASSES
        assert sum(float(r[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1, abs=1e-4)
    overlays = {o.name.split("_pred-")[0]: o for o in (out / "cams").glob("*.png")}
    assert set(overlays) == {"a", "gray", "rgba", "sub__photo"}
    with Image.open(src / "sub" / "photo.jpg") as im, Image.open(overlays["sub__photo"]) as ov:
        assert ov.size == im.size  # the photograph's own resolution (512 x 600)
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # input untouched


def test_mismatched_settings_are_named(trained, fundus_demo, tmp_path):
    ckpt, _ = trained
    with pytest.raises(AssertionError, match=r"--image_size 32"):
        run_bundle(NAME, "inference.yaml", dataset_dir=fundus_demo / "test", ckpt_dir=ckpt, output_dir=tmp_path / "x",
                   num_workers=0, device="$torch.device('cpu')")
    with pytest.raises(AssertionError, match=r'--preprocessing_mode "enhanced"'):
        run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=fundus_demo / "test", ckpt_dir=ckpt,
                   output_dir=tmp_path / "y", preprocessing_mode="original")


def test_torchscript_and_onnx_exports_match_pytorch(trained, tmp_path):
    from medplugin.networks import classifier

    ckpt, _ = trained
    net = classifier("resnet50", in_channels=3, num_classes=2)
    net.load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    check_exports(B, ckpt / "model.pt", net, x, tmp_path)


@pytest.mark.slow
def test_torchrun_two_processes_gloo(fundus_demo, tmp_path):
    # at 32 px a shard's last batch of one image meets a 1x1 layer4 map, where batch norm cannot train
    check_torchrun(B, fundus_demo, tmp_path, arch="resnet18", image_size=64)


@pytest.mark.slow
def test_demo_job_learns_referable_dr_and_its_cam_finds_the_lesions(tmp_path):
    """The demo job (`medplugin demo retina_fundus_classification --run`: 80 synthetic training eyes whose grade
    follows the planted lesions, the fundus demo overlay's ResNet-18 at 128 px from random weights, 16 epochs):
    the held-out patients' referable-DR ROC AUC is at least 0.9, and the Grad-CAM of the referable class, as the
    bundle's inference computes it (the overlay's cam_layer), peaks on a planted lesion (microaneurysm, blotch,
    exudate) or within the house's pointing-game tolerance (15 px at 224, 8.6 px at 128) on >= 80% of the 24
    referable test eyes, and on more of them than the same maps scored against another eye's lesions. The
    lesions gather around the fovea, near the image centre: a guess of the centre scores about as well at this
    tolerance (0.88), so this shows that the maps follow the lesions, not that they single one out."""
    import subprocess
    import sys

    from medplugin.data.synthetic.fundus import make_eyepacs_demo
    from tests.bundles._cam import bundle_cams, fundus_lesion_masks, peak_hits

    proc = subprocess.run([sys.executable, "-m", "medplugin.cli", "demo", NAME, "--out", str(tmp_path), "--run"],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((tmp_path / "runs" / "evaluate" / "metrics.json").read_text())
    assert m["n"] == 40 and 0 < m["referable_prevalence"] < 1
    assert m["auc"] >= 0.9, m
    # inference on the held-out eyes: every one scored, and >= 95 % of them in scope by the input gate
    rows = list(csv.DictReader((tmp_path / "runs" / "inference" / "predictions.csv").open()))
    assert len(rows) == 40 and all(r["error"] == "" for r in rows)
    assert sum(r["in_scope"] == "true" for r in rows) >= 0.95 * len(rows), [r["out_of_scope_reason"] for r in rows]

    # where the lesions are: the generator again, with the demo's arguments (the same files, byte for byte)
    again = tmp_path / "again"
    records = make_eyepacs_demo(again, n_patients=40, size=128, seed=0, n_test_patients=20)["records"]
    positive = [r for r in records if r["split"] == "test" and r["level"] >= 2]
    images = [tmp_path / "eyepacs" / "test" / f"{r['image']}.jpeg" for r in positive]
    assert len(positive) == 24 and all(p.read_bytes() == (again / "test" / p.name).read_bytes() for p in images)
    size = json.loads((tmp_path / "models" / "model.json").read_text())["image_size"]
    overlay = REPO / "configs" / "demo_retina_fundus_classification.yaml"  # the fundus demo's own, as it ran
    maps, layer = bundle_cams(NAME, [overlay], tmp_path / "models", images, [CLASSES.index("referable")] * len(images))
    masks = fundus_lesion_masks(images, [r["lesions"] for r in positive], size)
    hits = np.mean(peak_hits(maps, masks))
    shuffled = np.mean(peak_hits(maps, masks[1:] + masks[:1]))
    assert hits >= 0.8 and hits > shuffled, (layer, hits, shuffled)


def test_demo_command_writes_the_eyepacs_layout_the_bundle_indexes(tmp_path):
    import subprocess
    import sys

    from medplugin.data.fundus import index_fundus

    proc = subprocess.run([sys.executable, "-m", "medplugin.cli", "demo", NAME, "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    dl = index_fundus(tmp_path / "eyepacs", task="referable")
    assert len(dl["test"]) == 40 and sum(len(v) for v in dl.values()) == 120
    assert {e["label"] for e in dl["training"]} == {0, 1}


def test_the_gate_flags_inputs_the_fundus_classifier_was_not_made_for(trained, fundus_demo, tmp_path):
    """Issue 16: one inference run over a fundus photograph of its own kind (in scope), a real MR slice (Modality
    MR, and grayscale), a real grayscale chest radiograph (JPEG: no header, the content rule flags it) and a knee
    volume: each outsider is flagged with the tag or property and its value and, under ``gate: warn``, still
    scored; the knee volume, which a 2-D reader cannot take, gets an error row naming the file and the reason as
    well as the gate's reason."""
    from tests.bundles import _gate as gate

    ckpt, _ = trained
    rows = gate.gated_inference(NAME, ckpt, tmp_path, {
        "fundus.jpeg": sorted((fundus_demo / "test").glob("*.jpeg"))[0], "mr.dcm": gate.mr_slice,
        "radiograph.jpeg": REPO / "tests" / "data" / "real" / "person1951_bacteria_4882.jpeg",
        "knee.nii.gz": gate.knee_volume})
    probs = [f"prob_{c}" for c in CLASSES]
    gate.assert_in_scope(rows["fundus.jpeg"], probs)
    grayscale = "a grayscale image, expected a colour image"
    gate.assert_flagged(rows["mr.dcm"], ["Modality is MR, expected OP or XC", grayscale], probs)
    gate.assert_flagged(rows["radiograph.jpeg"], [grayscale], probs)
    volume = ["a 3-D volume of shape (12, 64, 64), expected a 2-D image"]
    gate.assert_refused_unreadable(rows["knee.nii.gz"], volume, "expected a 2D NIfTI image (x, y), got shape (12, 64")


def test_dicom_photographs_get_an_sr_per_study_and_secondary_captures_of_the_classes_called(trained, fundus_demo,
                                                                                            tmp_path):
    """Issue 16: synthetic colour fundus photographs stored as a fundus camera stores them (Ophthalmic Photography
    8 Bit Images, Modality OP, RGB, patient tags planted): both eyes in one study, a third photograph in another
    study, beside a JPEG photograph. Each study gets one Structured Report (dciodvfy: no error) referencing its
    photographs, with predictions.csv's gate verdict, probabilities and calls at model.json's operating points;
    each photograph a Grad-CAM Secondary Capture per class called (referable always, its threshold set to 0), of
    its eye; the JPEG none; no patient value in a file name, the tables or the log."""
    from pydicom.uid import generate_uid

    from medplugin.data.synthetic.fundus import synthetic_fundus
    from tests.bundles import _gate as gate
    from tests.bundles._dicom_results import check_dicom_results, model_calling, ophthalmic_image

    ckpt, _ = trained
    models = model_calling(ckpt, tmp_path / "models", "referable")
    src, study = tmp_path / "in", generate_uid()
    photographs = {"right.dcm": (0, study, "R", "right"), "left.dcm": (6, study, "L", "left"),
                   "other_study.dcm": (2, None, "R", "right")}
    for seed, (name, (lesions, uid, eye, side)) in enumerate(photographs.items()):
        image = synthetic_fundus(64, n_dark=lesions, n_bright=lesions // 2, rng=seed, side=side)["image"]
        ophthalmic_image(src / name, image, "OP", uid, eye)
    shutil.copy(sorted((fundus_demo / "test").glob("*.jpeg"))[0], src / "photo.jpeg")
    out = tmp_path / "inf"
    proc = run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=models, output_dir=out)
    rows = {Path(r["file"]).name: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert sorted(rows) == sorted([*photographs, "photo.jpeg"])
    for name in photographs:  # of the model's own kind by header (OP) and content (colour, large enough)
        assert gate.gate_reasons(rows[name])[0] == [], rows[name]
        assert rows[name]["call_referable"] == "1"
    results = check_dicom_results(out, CLASSES, proc.stdout + proc.stderr, [str(src / n) for n in photographs])
    srs = {n: results[str(src / n)]["sr"] for n in photographs}
    assert srs["right.dcm"] == srs["left.dcm"] != srs["other_study.dcm"]  # one SR per study
