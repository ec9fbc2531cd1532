"""The lung segmentation bundle, run through MONAI's bundle runner on tiny synthetic Montgomery-layout data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.bundles._contract import check_exports, check_torchrun, files_under, phi_leaks, same_report, with_phi
from tests.bundles._runner import (
    EVALUATE,
    MULTI_GPU_EVALUATE,
    REPO,
    SMOKE,
    bundle_dir,
    kill_inference_after_rows,
    monai_bundle,
    run_bundle,
    torchrun_bundle,
)

NAME = "lung_xray_segmentation"
B = bundle_dir(NAME)
REAL = REPO / "tests" / "data" / "real"


def _testfile(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available (install pydicom-data)")
    return str(path)


@pytest.fixture(scope="module")
def trained(lung_demo, tmp_path_factory):
    """One smoke training run shared by the tests below: (ckpt_dir, train output_dir)."""
    tmp = tmp_path_factory.mktemp("lung_bundle")
    ckpt, out = tmp / "models", tmp / "train"
    run_bundle(NAME, "train.yaml", SMOKE, dataset_dir=lung_demo, ckpt_dir=ckpt, output_dir=out)
    return ckpt, out


def test_metadata_input_size_is_the_configs_default():
    meta = json.loads((B / "configs" / "metadata.json").read_text())
    for config in ("train.yaml", "inference.yaml"):
        size = yaml.safe_load((B / "configs" / config).read_text())["image_size"]
        assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [size] * 2, config


def test_train_writes_checkpoint_metadata_and_tensorboard(trained, lung_demo):
    from medplugin.networks.segmentation import lung_unet_from_meta

    ckpt, out = trained
    state = torch.load(ckpt / "model.pt", weights_only=True)
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["arch"] == "lung_unet" and meta["image_size"] == 32 and meta["class_names"] == ["background", "lung"]
    assert meta["normalization"] == "zscore" and 0.0 <= meta["val_mean_dice"] <= 1.0
    lung_unet_from_meta(meta).load_state_dict(state, strict=True)  # model.json rebuilds exactly this network
    dl = json.loads((out / "datalist.json").read_text())
    assert [len(dl[s]) for s in ("training", "validation", "test")] == [8, 2, 2]
    patients = [{e["patient_id"] for e in dl[s]} for s in ("training", "validation", "test")]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])
    assert all(len(e["label"]) == 2 for e in dl["training"])  # left and right masks, merged at load time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert {"train_loss", "learning_rate", "val_mean_dice"} <= set(acc.Tags()["scalars"])
    images = [t for t in acc.Tags()["images"] if t.startswith("val_masks/")]
    assert sorted(images) == ["val_masks/0", "val_masks/1"]  # cam_images: 2 in the smoke overlay
    img = acc.Images("val_masks/0")[0]
    assert (img.width, img.height) == (3 * 32, 32)  # image | reference | prediction


def test_segment_lungs_transform_loads_the_bundle_model(trained, lung_demo):
    """The classification bundle's lung crop runs this bundle's model.pt through SegmentWithModel."""
    from medplugin.transforms import CropToMaskd, SegmentWithModeld
    from medplugin.transforms.io import LoadImage2dd

    ckpt, _ = trained
    image = sorted((lung_demo / "CXR_png").glob("*.png"))[0]
    d = LoadImage2dd("image")({"image": str(image)})
    d = SegmentWithModeld("image", model_path=ckpt / "model.pt", mask_key="lung_mask", keep_components=2)(d)
    assert tuple(d["lung_mask"].shape) == (1, 64, 64) and d["lung_mask"].dtype == torch.uint8
    d = CropToMaskd("image", mask_key="lung_mask", margin=0.05, margin_unit="fraction", box_key="lung_box")(d)
    box = d["lung_box"]
    assert tuple(d["image"].shape[1:]) == (box["end"][0] - box["start"][0], box["end"][1] - box["start"][1])


def test_evaluate_writes_metrics_and_plot(trained, lung_demo, tmp_path):
    ckpt, out_train = trained
    out = tmp_path / "eval"
    run_bundle(NAME, EVALUATE, SMOKE, dataset_dir=lung_demo, ckpt_dir=ckpt, output_dir=out)
    m = json.loads((out / "metrics.json").read_text())
    test_files = {e["image"] for e in json.loads((out_train / "datalist.json").read_text())["test"]}
    assert m["n"] == 2 and {r["file"] for r in m["per_image"]} == test_files
    assert m["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in m["per_image"]]))
    assert 0.0 <= m["min_dice"] <= m["mean_dice"] <= 1.0 and 0.0 <= m["mean_iou"] <= m["mean_dice"] + 1e-9
    assert (out / "dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_nifti_2d(src_png: Path, dst: Path) -> np.ndarray:
    import nibabel as nib
    from PIL import Image

    arr = np.asarray(Image.open(src_png), dtype=np.float32)  # (rows, cols)
    nib.save(nib.Nifti1Image(arr.T.copy(), np.diag([0.5, 0.7, 1.0, 1.0])), dst)  # x = column, y = row
    return arr


def test_inference_writes_masks_and_boxes_and_reports_the_corrupt_file(trained, lung_demo, tmp_path):
    import nibabel as nib
    from PIL import Image

    ckpt, _ = trained
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    pngs = sorted((lung_demo / "CXR_png").glob("*.png"))
    shutil.copy(pngs[0], src / "a.png")
    shutil.copy(REAL / "person1951_bacteria_4882.jpeg", src / "sub" / "cxr.jpeg")
    (src / "broken.png").write_bytes(pngs[1].read_bytes()[:200])
    shutil.copy(_testfile("6154"), src / "cr.dcm")  # a real 16x16 CR, MONOCHROME1
    _write_nifti_2d(pngs[2], src / "n.nii.gz")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "inf"
    run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=ckpt, output_dir=out)

    rows = list(csv.DictReader((out / "lung_boxes.csv").open()))
    assert [r["file"] for r in rows] == [str(src / n) for n in ("a.png", "broken.png", "cr.dcm", "n.nii.gz",
                                                                  "sub/cxr.jpeg")]
    bad = rows[1]
    assert bad["mask"] == "" and "broken.png" in bad["error"] and "truncated" in bad["error"]
    expected = {"a.png": ("a.png", (64, 64)), "cr.dcm": ("cr.nii.gz", (16, 16)),
                "n.nii.gz": ("n.nii.gz", (64, 64)), "sub/cxr.jpeg": ("sub__cxr.png", None)}
    for r in (rows[0], *rows[2:]):
        rel = str(Path(r["file"]).relative_to(src))
        mask_name, shape = expected[rel]
        assert r["error"] == "" and Path(r["mask"]) == out / "masks" / mask_name
        if mask_name.endswith(".png"):
            mask = np.asarray(Image.open(r["mask"]))
            assert set(np.unique(mask)) <= {0, 255}
            with Image.open(r["file"]) as im:
                assert mask.shape == (im.height, im.width)  # the image's own size
        else:
            nii = nib.load(r["mask"])
            mask = np.asarray(nii.dataobj).T  # back to (rows, cols)
            assert mask.shape == shape and set(np.unique(mask)) <= {0, 1}
            if rel == "n.nii.gz":  # a NIfTI input's affine is kept
                np.testing.assert_allclose(nii.affine, np.diag([0.5, 0.7, 1.0, 1.0]))
        box = json.loads((out / "boxes" / (mask_name.split(".")[0] + ".json")).read_text())
        assert box["file"] == r["file"] and box["image_size"] == list(mask.shape)
        fg = np.argwhere(mask > 0)
        if len(fg):
            (y0, x0), (y1, x1) = fg.min(0), fg.max(0)
            assert box["bbox"] == {"x": int(x0), "y": int(y0), "width": int(x1 - x0 + 1), "height": int(y1 - y0 + 1)}
            assert [int(r[k]) for k in ("x", "y", "width", "height")] == [box["bbox"][k] for k in ("x", "y", "width",
                                                                                                   "height")]
        else:
            assert box["bbox"] is None and r["x"] == ""
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # input untouched


def test_mismatched_settings_are_named(trained, lung_demo, tmp_path):
    ckpt, _ = trained
    with pytest.raises(AssertionError, match=r"--image_size 32"):
        run_bundle(NAME, "inference.yaml", dataset_dir=lung_demo / "CXR_png", ckpt_dir=ckpt, output_dir=tmp_path / "x",
                   num_workers=0, device="$torch.device('cpu')")


def test_torchscript_and_onnx_exports_match_pytorch(trained, tmp_path):
    from medplugin.networks.segmentation import lung_unet_from_meta

    ckpt, _ = trained
    net = lung_unet_from_meta(json.loads((ckpt / "model.json").read_text()))
    net.load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    check_exports(B, ckpt / "model.pt", net, x, tmp_path)


def test_patient_data_stays_out_of_inference_outputs(trained, tmp_path):
    """A real CR whose patient tags carry distinctive values: none of them in the mask, box files or the log."""
    ckpt, _ = trained
    src = tmp_path / "in"
    with_phi(_testfile("6154"), src / "cr.dcm")
    out = tmp_path / "inf"
    proc = run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=ckpt, output_dir=out)
    rows = list(csv.DictReader((out / "lung_boxes.csv").open()))
    assert len(rows) == 1 and rows[0]["error"] == "" and (out / "masks" / "cr.nii.gz").is_file()
    assert phi_leaks(out, proc.stdout + proc.stderr) == []


def test_dicom_inputs_get_a_valid_dicom_seg_of_the_mask(trained, tmp_path):
    """Issue 16: real chest CRs (uncompressed and JPEG 2000, patient tags planted) get a binary DICOM SEG of both
    lungs on their own pixel grid: dciodvfy finds no error, its frames are the NIfTI mask the bundle wrote, it
    references its source and files with its study; a PNG gets no SEG; no patient value in names or the log."""
    import nibabel as nib
    import pydicom

    from medplugin.io.dicom_results import read_segmentation_mask
    from tests.io._dicom_helpers import dciodvfy

    ckpt, _ = trained
    src = tmp_path / "in"
    with_phi(_testfile("RG1_UNCR.dcm"), src / "cr.dcm")
    with_phi(_testfile("RG1_J2KR.dcm"), src / "cr_j2k.dcm")
    shutil.copy(REAL / "person1951_bacteria_4882.jpeg", src / "cxr.jpeg")
    out = tmp_path / "inf"
    proc = run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=ckpt, output_dir=out)
    rows = list(csv.DictReader((out / "dicom_outputs.csv").open()))
    assert [(Path(r["file"]).name, r["object"], r["error"]) for r in rows] == [("cr.dcm", "SEG", ""),
                                                                                 ("cr_j2k.dcm", "SEG", "")]
    for r in rows:
        seg_path, source = Path(r["dicom_file"]), pydicom.dcmread(r["file"], stop_before_pixels=True)
        assert seg_path.parent == out / "dicom"
        seg = pydicom.dcmread(seg_path)
        assert seg_path.name == f"{seg.SOPInstanceUID}.dcm" and seg.Modality == "SEG"
        assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
        assert seg.PatientName == source.PatientName and seg.PatientID == source.PatientID  # files with its study
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lungs"]
        errors, _ = dciodvfy(seg_path)
        assert errors == [], errors
        refs = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                for i in s.ReferencedInstanceSequence}
        assert refs == {str(source.SOPInstanceUID)}
        mask = np.asarray(nib.load(out / "masks" / (Path(r["file"]).stem + ".nii.gz")).dataobj).T  # (rows, cols)
        np.testing.assert_array_equal(read_segmentation_mask(seg_path, r["file"]), (mask > 0).astype(np.uint8))
    assert phi_leaks(out, proc.stdout + proc.stderr) == []


@pytest.mark.slow
def test_torchrun_two_processes_gloo(lung_demo, tmp_path):
    check_torchrun(B, lung_demo, tmp_path, evaluate=False)  # evaluated under torchrun below


@pytest.mark.slow
def test_torchrun_evaluation_gives_the_one_process_metrics(trained, lung_demo, tmp_path):
    """multi_gpu_evaluate.yaml, two processes (gloo), one test image each: metrics.json (per-image rows in the
    dataset's order) and dice.png as the one-process evaluation writes them."""
    ckpt, out_train = trained
    one, two = tmp_path / "one", tmp_path / "two"
    run_bundle(NAME, EVALUATE, SMOKE, dataset_dir=lung_demo, ckpt_dir=ckpt, output_dir=one)
    torchrun_bundle(NAME, MULTI_GPU_EVALUATE, SMOKE, dataset_dir=lung_demo, ckpt_dir=ckpt, output_dir=two)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    test_files = [e["image"] for e in json.loads((out_train / "datalist.json").read_text())["test"]]
    assert [r["file"] for r in m2["per_image"]] == test_files and len(test_files) == 2
    same_report(m2, m1)
    assert files_under(two) == files_under(one) == ["datalist.json", "dice.png", "metrics.json", "run.log"]


@pytest.mark.slow
def test_demo_job_learns_the_lungs_and_segments_real_radiographs(tmp_path):
    """The demo job (synthetic Montgomery data -> train -> evaluate -> inference): test mean Dice >= 0.9; then the
    trained model on real chest radiographs: two Kermany JPEGs and a real chest CR DICOM, uncompressed and JPEG 2000."""
    import subprocess
    import sys

    import nibabel as nib
    from PIL import Image

    proc = subprocess.run([sys.executable, "-m", "medplugin.cli", "demo", NAME, "--out", str(tmp_path), "--run"],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((tmp_path / "runs" / "evaluate" / "metrics.json").read_text())
    assert m["n"] == 7 and m["mean_dice"] >= 0.9
    rows = list(csv.DictReader((tmp_path / "runs" / "inference" / "lung_boxes.csv").open()))
    assert len(rows) == 48 and all(r["error"] == "" for r in rows)

    # the shared transform with the demo's model: Dice against the reference masks at the images' own size
    from medplugin.transforms import LoadLungMask, SegmentWithModel
    from medplugin.transforms.io import LoadImage2d

    seg = SegmentWithModel(tmp_path / "models" / "model.pt", keep_components=2)
    dice = []
    for e in json.loads((tmp_path / "runs" / "train" / "datalist.json").read_text())["test"]:
        pred = seg(LoadImage2d()(e["image"]))[0].numpy() > 0
        truth = LoadLungMask()(e["label"])[0].numpy() > 0
        dice.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    assert np.mean(dice) >= 0.9, dice

    # real radiographs: they run, masks come back at the image's size, with a box inside the image
    src = tmp_path / "real"
    src.mkdir()
    for n in ("NORMAL2-IM-1438-0001.jpeg", "person1951_bacteria_4882.jpeg"):
        shutil.copy(REAL / n, src / n)
    shutil.copy(_testfile("RG1_UNCR.dcm"), src / "chest_cr.dcm")
    shutil.copy(_testfile("RG1_J2KR.dcm"), src / "chest_cr_j2k.dcm")
    out = tmp_path / "real_out"
    B_cfg = [str(B / "configs" / "inference.yaml"), str(REPO / "configs" / f"demo_{NAME}.yaml")]
    monai_bundle("run", "--bundle_root", str(B), "--config_file", json.dumps(B_cfg), "--dataset_dir", str(src),
                 "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(out))
    rows = {Path(r["file"]).name: r for r in csv.DictReader((out / "lung_boxes.csv").open())}
    assert set(rows) == {"NORMAL2-IM-1438-0001.jpeg", "person1951_bacteria_4882.jpeg", "chest_cr.dcm",
                         "chest_cr_j2k.dcm"}
    assert all(r["error"] == "" for r in rows.values())
    for n in ("NORMAL2-IM-1438-0001", "person1951_bacteria_4882"):
        with Image.open(src / f"{n}.jpeg") as im, Image.open(out / "masks" / f"{n}.png") as mk:
            assert mk.size == im.size
    cr = np.asarray(nib.load(out / "masks" / "chest_cr.nii.gz").dataobj).T
    cr_j2k = np.asarray(nib.load(out / "masks" / "chest_cr_j2k.nii.gz").dataobj).T
    assert cr.shape == (1955, 1841)
    np.testing.assert_array_equal(cr, cr_j2k)  # lossless JPEG 2000 decodes to the same pixels, so the same mask
    for r in rows.values():
        box = {k: int(r[k]) for k in ("x", "y", "width", "height")} if r["x"] else None
        assert box is not None and box["width"] > 0 and box["height"] > 0
    # trained on synthetic phantoms only, the model still finds both lungs on the normal pediatric JPEG and the
    # adult CR (on the pneumonia JPEG, whose left lung is opaque, it finds one): a lung on each side of the
    # midline, a plausible share of the image, a box around the chest's middle
    normal = np.asarray(Image.open(out / "masks" / "NORMAL2-IM-1438-0001.png")) > 0
    for name, mask in (("NORMAL2-IM-1438-0001.jpeg", normal), ("chest_cr.dcm", cr > 0)):
        h, w = mask.shape
        assert mask[:, : w // 2].sum() > 0.02 * h * w and mask[:, w // 2:].sum() > 0.02 * h * w, name
        assert 0.08 < float(rows[name]["area_fraction"]) < 0.5, name
        cx = int(rows[name]["x"]) + int(rows[name]["width"]) / 2
        assert w / 3 < cx < 2 * w / 3, name


def _archive(lung_demo: Path, dst: Path, n: int, size: int = 384) -> list[str]:
    """``n`` radiographs (the demo's, enlarged to ``size`` px, so that each mask takes a moment to write) and a
    truncated one: the input paths in input order."""
    from PIL import Image

    dst.mkdir()
    pngs = sorted((lung_demo / "CXR_png").glob("*.png"))
    for i in range(n):
        with Image.open(pngs[i % len(pngs)]) as im:
            im.resize((size + i, size), Image.BILINEAR).save(dst / f"cxr_{i:02d}.png")
    (dst / "cxr_03_broken.png").write_bytes((dst / "cxr_03.png").read_bytes()[:200])
    return sorted(str(p) for p in dst.iterdir())


def _results(out: Path) -> tuple[list[list[str]], dict[str, bytes], str | None]:
    """The table (the run folder's name taken out of the mask paths), the mask files and rois.json (``None`` before
    the run's end) of a run."""
    with (out / "lung_boxes.csv").open(newline="") as f:
        table = [[c.replace(str(out), "<out>") for c in r] for r in csv.reader(f)]
    masks = {p.name: p.read_bytes() for p in sorted((out / "masks").iterdir())}
    rois = out / "rois.json"
    return table, masks, rois.read_text().replace(str(out), "<out>") if rois.is_file() else None


@pytest.mark.slow
def test_inference_killed_and_resumed_gives_one_result_per_input_equal_to_an_uninterrupted_run(trained, lung_demo,
                                                                                                tmp_path):
    """SIGKILL after a few images, then --resume true: every input once in lung_boxes.csv (the bad file's error
    row too), in input order, the same rows, masks, boxes and rois.json as one uninterrupted run."""
    ckpt, _ = trained
    files = _archive(lung_demo, tmp_path / "in", 16)
    common = {"dataset_dir": tmp_path / "in", "ckpt_dir": ckpt, "batch_size": 1}
    killed = tmp_path / "killed"
    kill_inference_after_rows(NAME, killed / "lung_boxes.csv", 3, SMOKE, output_dir=killed, **common)
    done, masks, rois = _results(killed)
    assert 3 <= len(done) - 1 < len(files) and rois is None
    assert {Path(r[1]).name for r in done[1:] if r[1]} <= set(masks)  # a row only once its mask is on disk

    run_bundle(NAME, "inference.yaml", SMOKE, output_dir=killed, resume="true", **common)
    whole = tmp_path / "whole"
    run_bundle(NAME, "inference.yaml", SMOKE, output_dir=whole, **common)
    resumed, fresh = _results(killed), _results(whole)
    assert [r[0] for r in resumed[0][1:]] == files  # every input exactly once, in input order
    assert resumed == fresh  # rows, mask files and rois.json
    assert len(fresh[1]) == 16 and "truncated" in fresh[0][5][-1]  # a mask per good image; the bad one's error
    assert sorted(p.name for p in (killed / "boxes").iterdir()) == sorted(p.name for p in (whole / "boxes").iterdir())
    assert not list(killed.rglob(".*.tmp"))


@pytest.mark.slow
def test_torchrun_inference_gives_the_one_process_masks_and_table(trained, lung_demo, tmp_path):
    """multi_gpu_inference.yaml, two processes (gloo): each rank writes the masks of its shard, rank 0 joins one
    lung_boxes.csv in input order and writes rois.json; all as one process writes them, no part file left."""
    ckpt, _ = trained
    files = _archive(lung_demo, tmp_path / "in", 5, size=64)
    one, two = tmp_path / "one", tmp_path / "two"
    run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=tmp_path / "in", ckpt_dir=ckpt, output_dir=one)
    torchrun_bundle(NAME, ("inference.yaml", "multi_gpu_inference.yaml"), SMOKE, dataset_dir=tmp_path / "in",
                    ckpt_dir=ckpt, output_dir=two)
    r1, r2 = _results(one), _results(two)
    assert [r[0] for r in r2[0][1:]] == files
    assert r2 == r1 and len(r1[1]) == 5
    assert files_under(two) == files_under(one)  # no part files; boxes, masks, table, rois.json, run.log
