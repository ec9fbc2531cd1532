"""The knee MRI ACL-region segmentation bundle, run through MONAI's bundle runner on tiny synthetic NIfTI data."""

from __future__ import annotations

import csv
import glob
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundles._contract import PHI, check_exports, check_torchrun, phi_leaks, write_dicom_series
from tests.bundles._runner import EVALUATE, REPO, SMOKE, bundle_dir, run_bundle
from tests.bundles.conftest import KNEE_SEG_SHAPE as SHAPE

NAME = "knee_mri_segmentation"
B = bundle_dir(NAME)


@pytest.fixture(scope="module")
def trained(knee_seg_demo, tmp_path_factory):
    """One smoke training run shared by the tests below: (ckpt_dir, train output_dir)."""
    tmp = tmp_path_factory.mktemp("knee_seg_bundle")
    ckpt, out = tmp / "models", tmp / "train"
    run_bundle(NAME, "train.yaml", SMOKE, dataset_dir=knee_seg_demo, ckpt_dir=ckpt, output_dir=out, patch_slices=16)
    return ckpt, out


def test_train_writes_checkpoint_metadata_and_tensorboard(trained):
    ckpt, out = trained
    state = torch.load(ckpt / "model.pt", weights_only=True)
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["arch"] == "knee_unet3d" and meta["image_size"] == 32 and meta["roi_size"] == [16, 32, 32]
    assert meta["class_names"] == ["background", "acl"] and meta["intensity_percentiles"] == [0.5, 99.5]
    assert 0 <= meta["val_mean_dice"] <= 1
    from medplugin.networks import unet3d_from_meta

    net = unet3d_from_meta(meta)  # model.json alone rebuilds the network the weights fit
    net.load_state_dict(state, strict=True)
    dl = json.loads((out / "datalist.json").read_text())
    patients = [{e["patient_id"] for e in dl[s]} for s in ("training", "validation", "test")]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])
    assert sum(len(dl[s]) for s in dl) == 8 and all(Path(e["label"]).parent.name == "masks" for e in dl["training"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert {"train_loss", "learning_rate", "val_mean_dice"} <= set(acc.Tags()["scalars"])
    slices = [t for t in acc.Tags()["images"] if t.startswith("val_slices/")]
    assert slices  # image | truth | prediction panels, three times as wide as high
    img = acc.Images(slices[0])[0]
    assert (img.width, img.height) == (3 * SHAPE[2], SHAPE[1])


def test_evaluate_writes_metrics_and_plot(trained, knee_seg_demo, tmp_path):
    ckpt, out_train = trained
    out = tmp_path / "eval"
    run_bundle(NAME, EVALUATE, SMOKE, dataset_dir=knee_seg_demo, ckpt_dir=ckpt, output_dir=out)
    m = json.loads((out / "metrics.json").read_text())
    test_files = {e["image"] for e in json.loads((out_train / "datalist.json").read_text())["test"]}
    assert m["n"] == len(test_files) >= 1 and {r["file"] for r in m["per_exam"]} == test_files
    assert m["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in m["per_exam"]]), abs=1e-6)
    for r in m["per_exam"]:  # the reference volume is the mask file's
        name = Path(r["file"]).name
        assert r["true_voxels"] == int((nib.load(knee_seg_demo / "masks" / name).get_fdata() > 0).sum())
    assert (out / "dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inference_writes_masks_on_the_input_grid_and_reports_the_corrupt_file(trained, knee_seg_demo, tmp_path):
    ckpt, _ = trained
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    exams = sorted((knee_seg_demo / "exams").glob("*.nii.gz"))
    shutil.copy(exams[0], src / "a.nii.gz")
    shutil.copy(exams[1], src / "sub" / "b.nii.gz")
    (src / "broken.nii.gz").write_bytes(exams[2].read_bytes()[:300])
    vol = nib.load(exams[3]).get_fdata().transpose(2, 1, 0)  # MRNet-style (slices, H, W) uint8 array
    np.save(src / "c.npy", np.round(vol * 255).clip(0, 255).astype(np.uint8))
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "inf"
    run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=ckpt, output_dir=out, patch_slices=16)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["file"] for r in rows] == [str(src / n) for n in ("a.nii.gz", "broken.nii.gz", "c.npy", "sub/b.nii.gz")]
    bad = rows[1]
    assert bad["mask"] == "" and "broken.nii.gz" in bad["error"] and "not a readable NIfTI" in bad["error"]
    rois = {Path(r["file"]).name: r for r in json.loads((out / "rois.json").read_text())["exams"]}
    for name, src_file in (("a", src / "a.nii.gz"), ("sub__b", src / "sub" / "b.nii.gz")):
        row = rois[src_file.name]
        assert row["error"] == "" and Path(row["mask"]) == out / "masks" / f"{name}.nii.gz"
        mask, image = nib.load(row["mask"]), nib.load(src_file)
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)  # the input's grid
        data = np.asarray(mask.dataobj)
        assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}
        assert row["voxels"] == int(data.sum())
        if row["voxels"]:
            start, end = row["bbox_voxel"]["start"], row["bbox_voxel"]["end"]
            idx = np.nonzero(data)
            assert start == [int(i.min()) for i in idx] and end == [int(i.max()) + 1 for i in idx]
            # the mm box is the affine applied to the box's outer voxel faces
            corner = image.affine @ np.array([*(np.array(start) - 0.5), 1.0])
            assert np.all(np.array(row["bbox_mm"]["min"]) <= corner[:3] + 1e-3)
            assert np.all(np.array(row["bbox_mm"]["max"]) >= corner[:3] - 1e-3)
    npy_mask = nib.load(rois["c.npy"]["mask"])
    assert npy_mask.shape == vol.shape  # .npy exams keep their (slices, H, W) order
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # input untouched


def test_real_mri_nifti_runs_through_inference(trained, tmp_path):
    """nibabel's test data ship a real 3D MRI (anatomical.nii, 33x41x25 at 2 mm): mask on its grid."""
    ckpt, _ = trained
    real = Path(glob.glob(str(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"))[0])
    src = tmp_path / "real"
    src.mkdir()
    shutil.copy(real, src / "anatomical.nii")
    out = tmp_path / "inf_real"
    run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=ckpt, output_dir=out, patch_slices=16)
    rec = json.loads((out / "rois.json").read_text())["exams"][0]
    assert rec["error"] == ""
    mask, image = nib.load(rec["mask"]), nib.load(real)
    assert mask.shape == image.shape == (33, 41, 25) and np.allclose(mask.affine, image.affine)
    assert rec["voxels"] == int(np.asarray(mask.dataobj).sum())


def test_mismatched_settings_are_named(trained, knee_seg_demo, tmp_path):
    ckpt, _ = trained
    with pytest.raises(AssertionError, match=r"--image_size 32"):
        run_bundle(NAME, "inference.yaml", dataset_dir=knee_seg_demo / "exams", ckpt_dir=ckpt,
                   output_dir=tmp_path / "x", num_workers=0, device="$torch.device('cpu')", patch_slices=16)


def test_bad_pairs_stop_training_with_their_names(knee_seg_demo, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(knee_seg_demo, root)
    (root / "masks" / "knee_001.nii.gz").unlink()
    m = nib.load(root / "masks" / "knee_002.nii.gz")
    data, affine = np.asarray(m.dataobj).copy(), m.affine.copy()
    nib.save(nib.Nifti1Image(data[:, :, :8], affine), root / "masks" / "knee_002.nii.gz")
    with pytest.raises(AssertionError) as failed:
        run_bundle(NAME, "train.yaml", SMOKE, dataset_dir=root, ckpt_dir=tmp_path / "m", output_dir=tmp_path / "t")
    # the items first, then the run's one-line error that counts them
    assert re.search(r"knee_001.nii.gz: no mask .*knee_001.nii.gz for this exam", str(failed.value))
    assert re.search(r"knee_002.nii.gz: mask shape \(32, 32, 8\) differs from its image's", str(failed.value))
    assert re.search(r"error: .*: 2 bad item\(s\) \(on_bad_input='fail'\)", str(failed.value))
    assert not (tmp_path / "m" / "model.pt").exists()


def test_torchscript_and_onnx_exports_match_pytorch(trained, tmp_path):
    from medplugin.networks import knee_unet3d

    ckpt, _ = trained
    net = knee_unet3d()
    net.load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))
    x = torch.randn(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    check_exports(B, ckpt / "model.pt", net, x, tmp_path)


def test_patient_data_stays_out_of_inference_outputs(trained, tmp_path):
    """A DICOM series whose patient tags carry distinctive values: none of them in the mask, ROI files or the log."""
    ckpt, _ = trained
    src = tmp_path / "in"
    write_dicom_series(src / "series", n=16, patient=PHI)
    out = tmp_path / "inf"
    proc = run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=ckpt, output_dir=out, patch_slices=16)
    rec = json.loads((out / "rois.json").read_text())["exams"]
    assert len(rec) == 1 and rec[0]["error"] == "" and Path(rec[0]["mask"]).is_file()
    assert phi_leaks(out, proc.stdout + proc.stderr) == []


def test_a_dicom_series_gets_a_multiframe_seg_on_its_slices(trained, tmp_path):
    """Issue 16: a sagittal MR series (files in shuffled order, patient tags planted) gets a binary multi-frame DICOM
    SEG of the ACL region, one frame per slice of the series: dciodvfy finds no error, it files with the study,
    references every slice, and its frames re-assemble to the NIfTI mask the bundle wrote (100% equal)."""
    import pydicom
    from pydicom.uid import generate_uid

    from medplugin.io.dicom_results import read_segmentation_mask
    from tests.io._dicom_helpers import dciodvfy

    ckpt, _ = trained
    src = tmp_path / "in"
    series = write_dicom_series(src / "series", n=16, patient=PHI)
    frame_of_reference = generate_uid()
    files = sorted(series.glob("*.dcm"))
    for f in files:  # what an MR image needs beyond write_dicom_series' minimum
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.StudyDate, ds.StudyTime, ds.PatientSex, ds.StudyID = "20240102", "101500", "F", "KNEE1"
        ds.save_as(f, enforce_file_format=True)
    out = tmp_path / "inf"
    proc = run_bundle(NAME, "inference.yaml", SMOKE, dataset_dir=src, ckpt_dir=ckpt, output_dir=out, patch_slices=16)
    rows = list(csv.DictReader((out / "dicom_outputs.csv").open()))
    assert [(Path(r["file"]).name, r["object"], r["error"]) for r in rows] == [("series", "SEG", "")]
    seg_path = Path(rows[0]["dicom_file"])
    seg, first = pydicom.dcmread(seg_path), pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg_path == out / "dicom" / f"{seg.SOPInstanceUID}.dcm"
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.FrameOfReferenceUID == frame_of_reference
    assert int(seg.NumberOfFrames) == 16
    errors, _ = dciodvfy(seg_path)
    assert errors == [], errors
    refs = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert refs == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    mask = np.asarray(nib.load(json.loads((out / "rois.json").read_text())["exams"][0]["mask"]).dataobj)
    assert mask.shape == (16, 40, 36)  # DICOM input: slice-first, the series' (slices, rows, columns)
    frames = read_segmentation_mask(seg_path, [str(f) for f in files])
    np.testing.assert_array_equal(frames, (mask > 0).astype(np.uint8))
    assert phi_leaks(out, proc.stdout + proc.stderr) == []


def test_datalist_command_writes_what_the_bundle_indexes(knee_seg_demo, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "kneeseg.json"
    proc = subprocess.run([sys.executable, "-m", "medplugin.cli", "datalist", "kneeseg", str(knee_seg_demo), "-o",
                           str(out), "--val-fraction", "0.15"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from medplugin.data.knee_segmentation import index_knee_segmentation

    assert json.loads(out.read_text()) == index_knee_segmentation(knee_seg_demo)


@pytest.mark.slow
def test_torchrun_two_processes_gloo(knee_seg_demo, tmp_path):
    check_torchrun(B, knee_seg_demo, tmp_path, patch_slices=16)


@pytest.mark.slow
def test_demo_job_learns_the_synthetic_task(tmp_path):
    """The demo job: demo data -> train -> evaluate -> inference, mean Dice >= 0.85 on held-out patients,
    and the trained model crops every test volume around its whole ACL region (SegmentWithModeld + CropToMaskd)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "medplugin.cli", "demo", NAME, "--out", str(tmp_path), "--run"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((tmp_path / "runs" / "evaluate" / "metrics.json").read_text())
    assert m["n"] >= 3 and m["mean_dice"] >= 0.85, m
    rows = list(csv.DictReader((tmp_path / "runs" / "inference" / "predictions.csv").open()))
    assert len(rows) == 24 and all(r["error"] == "" and int(r["voxels"]) > 0 for r in rows)

    from medplugin.transforms import CropToMaskd, LoadKneeVolumed, SegmentWithModeld

    chain = [
        LoadKneeVolumed(["image", "label"]),
        SegmentWithModeld("image", model_path=tmp_path / "models" / "model.pt", fill_holes=False),
        CropToMaskd(["image", "label"], mask_key="roi_mask", margin=2.0, margin_unit="mm"),
    ]
    for exam in m["per_exam"]:
        d = {"image": exam["file"], "label": exam["file"].replace("/exams/", "/masks/")}
        full = int(nib.load(d["label"]).get_fdata().sum())
        for t in chain:
            d = t(d)
        assert int(d["label"].sum()) == full  # the crop holds the whole true ACL region
        assert d["image"].numel() < 0.5 * 16 * 64 * 64  # and is much smaller than the volume
