"""A round trip through a real PACS: Orthanc with its DICOMweb plugin, radiographs and a knee series stored in it,
studies retrieved with WADO-RS, SR/SC/SEG written for them and stored back with STOW-RS, found with QIDO-RS in
the source studies and identical to the files written locally."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
pytest.importorskip("dicomweb_client")

from medplugin.data.chestxray14 import FINDINGS  # noqa: E402
from medplugin.io.dicom_results import (  # noqa: E402
    ACL_REGION,
    LUNGS,
    ImageClassification,
    ModelInfo,
    read_classification_sr,
    read_segmentation_mask,
    write_cam_secondary_capture,
    write_classification_sr,
    write_segmentation,
)
from medplugin.io.dicomweb import DicomWeb  # noqa: E402
from tests.io._dicom_helpers import dciodvfy, knee_series, needles_in, sample_file, with_phi  # noqa: E402

CHEST = ModelInfo("chest_xray_classification", "0.4.0", operating_points={
    "Effusion": {"threshold": 0.35, "criterion": "youden", "sensitivity": 0.86, "specificity": 0.81}},
    temperature=1.3)
LUNG = ModelInfo("lung_xray_segmentation", "0.3.0")
KNEE = ModelInfo("knee_mri_segmentation", "0.2.0")
PROBS = {"Atelectasis": 0.12, "Cardiomegaly": 0.71, "Effusion": 0.4, "Nodule": 0.05}


def _encoded(ds) -> bytes:
    """The dataset's encoded bytes, file meta excluded (a server may rewrite the file meta header)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = DicomBytesIO()
    ts = ds.file_meta.TransferSyntaxUID
    out.is_little_endian, out.is_implicit_VR = ts.is_little_endian, ts.is_implicit_VR
    write_dataset(out, ds)
    return out.getvalue()


def _lungs(rows: int, cols: int) -> np.ndarray:
    yy, xx = np.mgrid[:rows, :cols]
    right = ((yy - rows * 0.45) / (rows * 0.25)) ** 2 + ((xx - cols * 0.3) / (cols * 0.12)) ** 2 <= 1
    left = ((yy - rows * 0.5) / (rows * 0.22)) ** 2 + ((xx - cols * 0.68) / (cols * 0.11)) ** 2 <= 1
    return (right | left).astype(np.uint8)


@pytest.mark.slow  # starts a server
def test_orthanc_round_trip(orthanc, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    t0 = time.monotonic()
    src = tmp_path / "sources"
    chest = [with_phi(sample_file("RG1_UNCR.dcm"), src / "chest" / "a.dcm"),
             with_phi(sample_file("RG1_J2KR.dcm"), src / "chest" / "b.dcm")]
    knee = knee_series(src / "knee")
    pacs = DicomWeb(orthanc.dicomweb_url)
    stored = pacs.store([*chest, *knee])
    assert len(stored) == 2 + len(knee)

    chest_study = str(pydicom.dcmread(chest[0], stop_before_pixels=True).StudyInstanceUID)
    knee_study = str(pydicom.dcmread(knee[0], stop_before_pixels=True).StudyInstanceUID)
    got_chest = pacs.retrieve_study(chest_study, tmp_path / "wado" / "chest")
    got_knee = pacs.retrieve_study(knee_study, tmp_path / "wado" / "knee")
    assert len(got_chest) == 2 and len(got_knee) == len(knee)
    # retrieved as stored: the JPEG 2000 radiograph is still JPEG 2000, and its pixels are the source's
    for local in chest:
        mine = pydicom.dcmread(local)
        theirs = pydicom.dcmread(next(p for p in got_chest if p.stem == mine.SOPInstanceUID))
        assert theirs.file_meta.TransferSyntaxUID == mine.file_meta.TransferSyntaxUID
        assert theirs.PixelData == mine.PixelData

    # results written from the retrieved study (fixed probabilities and planted masks stand in for the bundles)
    out = tmp_path / "results"
    images = [ImageClassification(p, PROBS) for p in sorted(got_chest)]
    sr = write_classification_sr(images, CHEST, out)
    scs = []
    series = None
    ds0 = pydicom.dcmread(got_chest[0], stop_before_pixels=True)
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    positive = [c for c, p in PROBS.items() if p >= CHEST.operating_points.get(c, {"threshold": 0.5})["threshold"]]
    for n, cls in enumerate(positive):
        overlay = np.zeros((rows, cols, 3), np.uint8)
        overlay[..., n % 3] = 180
        path = write_cam_secondary_capture(got_chest[0], overlay, cls, CHEST, out, probability=PROBS[cls],
                                           series_instance_uid=series, instance_number=n + 1)
        series = series or str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        scs.append(path)
    assert len(scs) == 2  # Cardiomegaly (0.71 >= 0.5) and Effusion (0.40 >= its 0.35)
    lungs = _lungs(rows, cols)
    seg_chest = write_segmentation(got_chest[0], lungs, [LUNGS], LUNG, out)
    planted = np.zeros((len(got_knee), 40, 36), np.uint8)
    planted[1:4, 10:20, 5:12] = 1
    seg_knee = write_segmentation(got_knee, planted, [ACL_REGION], KNEE, out)
    results = [sr, *scs, seg_chest, seg_knee]
    for path in results:
        errors, _ = dciodvfy(path)
        assert errors == [], (path.name, errors)
    assert np.array_equal(read_segmentation_mask(seg_chest, got_chest[0]), lungs)
    assert np.array_equal(read_segmentation_mask(seg_knee, got_knee), planted)

    assert sorted(pacs.store(results)) == sorted(p.stem for p in results)

    # QIDO-RS finds them in the source studies, as new series
    in_chest = {i["SOPInstanceUID"]: i for i in pacs.search_instances(chest_study)}
    in_knee = {i["SOPInstanceUID"]: i for i in pacs.search_instances(knee_study)}
    assert {p.stem for p in [sr, *scs, seg_chest]} <= set(in_chest)
    assert seg_knee.stem in in_knee
    assert {in_chest[sr.stem]["Modality"], in_chest[scs[0].stem]["Modality"], in_chest[seg_chest.stem]["Modality"]} \
        == {"SR", "OT", "SEG"}
    assert {i["SOPInstanceUID"] for i in pacs.search_instances(chest_study, modality="SEG")} == {seg_chest.stem}
    source_series = {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in got_chest}
    assert not source_series & {in_chest[p.stem]["SeriesInstanceUID"] for p in [sr, *scs, seg_chest]}

    # what the PACS gives back is what was written: every element, encoded byte for byte (the file meta header
    # aside, which a server may rewrite)
    for path in results:
        mine = pydicom.dcmread(path)
        study = chest_study if path != seg_knee else knee_study
        theirs = pacs.retrieve_instance(study, str(mine.SeriesInstanceUID), str(mine.SOPInstanceUID))
        assert theirs == mine, path.name
        assert _encoded(theirs) == _encoded(mine), path.name
    # and it still reads as what the model said, referencing the retrieved images
    report = read_classification_sr(sr)
    assert [r["sop_instance_uid"] for r in report] == [p.stem for p in sorted(got_chest)]
    assert {c: v["probability"] for c, v in report[0]["findings"].items()} == pytest.approx(PROBS)

    assert needles_in(tmp_path / "results", caplog.text) == []
    print(f"round trip: {time.monotonic() - t0:.1f} s for {len(results)} results")


def _readme_pacs_command() -> list[str]:
    """The README's ``medplugin pacs`` line, split as a shell does."""
    import re
    import shlex

    from tests.bundles._runner import REPO

    text = (REPO / "README.md").read_text()
    lines = [ln for b in re.findall(r"```[^\n]*\n(.*?)```", text, re.S) for ln in b.splitlines()
             if ln.startswith("medplugin pacs ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def _pacs(bundle: str, url: str, study: str, ckpt, out, *extra: str):
    """``medplugin pacs`` as the README shows it, with this test's archive, study, model and output folder (and the
    smoke overlay the model was trained with): retrieve, infer, store; its results file and output."""
    import json
    import subprocess
    import sys

    from tests.bundles._runner import REPO, SMOKE, quiet_env

    args = _readme_pacs_command()[2:]
    values = {"--url": url, "--study": study, "--ckpt_dir": str(ckpt), "--out": str(out)}
    assert args[0] == "chest_xray_classification" and set(args[1::2]) == set(values), args
    args = [bundle, *(v for k in args[1::2] for v in (k, values[k]))]
    cmd = [sys.executable, "-m", "medplugin.cli", "pacs", *args, "--overlay", str(SMOKE), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "stored in 1 study(ies); 0 input(s) without a result" in proc.stdout, proc.stdout[-2000:]
    return json.loads((out / "pacs_results.json").read_text()), proc.stdout + proc.stderr


@pytest.mark.slow  # trains three bundles for a few seconds each and starts a server
def test_bundle_inference_on_pacs_studies_stores_its_results_back(orthanc, tmp_path):
    """Issue 16: ``medplugin pacs`` retrieves a study with WADO-RS, runs the bundle's inference on it and stores the
    bundle's own SR, Secondary Captures and SEG with STOW-RS: the chest classifier and the lung segmenter on two
    real radiographs (uncompressed and JPEG 2000), the knee segmenter on a sagittal MR series. QIDO-RS finds each
    result in its source study, each is what the run wrote (byte for byte) and passes dciodvfy; the SR references
    the source images and records the calls predictions.csv made; no patient data in any name or log."""
    import csv

    from medplugin.data.synthetic.chest_xray import make_chestxray14_demo, make_lung_seg_demo
    from medplugin.data.synthetic.knee import make_knee_nifti_demo
    from tests.bundles._runner import SMOKE, run_bundle

    src = tmp_path / "sources"
    chest = [with_phi(sample_file("RG1_UNCR.dcm"), src / "chest" / "a.dcm"),
             with_phi(sample_file("RG1_J2KR.dcm"), src / "chest" / "b.dcm")]
    knee = knee_series(src / "knee", n=16)
    pacs = DicomWeb(orthanc.dicomweb_url)
    pacs.store([*chest, *knee])
    chest_study = str(pydicom.dcmread(chest[0], stop_before_pixels=True).StudyInstanceUID)
    knee_study = str(pydicom.dcmread(knee[0], stop_before_pixels=True).StudyInstanceUID)

    m = tmp_path / "models"  # smoke-trained models of the three bundles
    cxr = make_chestxray14_demo(tmp_path / "cxr_demo" / "nih", n_patients=10, size=64, seed=0)["root"]
    run_bundle("chest_xray_classification", "train.yaml", SMOKE, dataset_dir=cxr, ckpt_dir=m / "chest",
               output_dir=tmp_path / "train_chest", val_fraction=0.3)
    lungs = make_lung_seg_demo(tmp_path / "lung_demo", n=12, size=64, seed=0)["root"]
    run_bundle("lung_xray_segmentation", "train.yaml", SMOKE, dataset_dir=lungs, ckpt_dir=m / "lung",
               output_dir=tmp_path / "train_lung")
    knees = make_knee_nifti_demo(tmp_path / "knee_demo", n=6, shape=(16, 32, 32), seed=1)["root"]
    run_bundle("knee_mri_segmentation", "train.yaml", SMOKE, dataset_dir=knees, ckpt_dir=m / "knee",
               output_dir=tmp_path / "train_knee", patch_slices=16)

    url, runs = orthanc.dicomweb_url, tmp_path / "pacs"
    cls, log_cls = _pacs("chest_xray_classification", url, chest_study, m / "chest", runs / "chest")
    seg, log_seg = _pacs("lung_xray_segmentation", url, chest_study, m / "lung", runs / "lung")
    kseg, log_knee = _pacs("knee_mri_segmentation", url, knee_study, m / "knee", runs / "knee", "--set",
                           "patch_slices=16")

    # what each run wrote: an SR for the study, a Secondary Capture per finding called in predictions.csv, a SEG
    # per radiograph, one multi-frame SEG for the series
    rows = list(csv.DictReader((runs / "chest" / "inference" / "predictions.csv").open()))
    called = sum(int(r[f"call_{c}"]) for r in rows for c in FINDINGS)
    kinds = [r["object"] for r in cls["results"]]
    assert kinds.count("SR") == 1 and kinds.count("SC") == called and len(kinds) == 1 + called, (kinds, called)
    assert sorted(next(r["sources"] for r in cls["results"] if r["object"] == "SR")) == sorted(r["file"]
                                                                                            for r in rows)
    # the lung run came after the chest results were filed in the same study: their series (SR, OT) are no inputs
    assert [r["object"] for r in seg["results"]] == ["SEG", "SEG"]
    import re

    assert re.search(r"retrieved study \S+: 2 instance\(s\) in [12] series \([1-9] series of other modalities left "
                     r"out\)", log_seg), log_seg[-2000:]
    assert [r["object"] for r in kseg["results"]] == ["SEG"]
    results = [*cls["results"], *seg["results"], *kseg["results"]]
    assert all(r["stored"] for r in results)
    for r in results:
        errors, _ = dciodvfy(Path(r["file"]))
        assert errors == [], (r["file"], errors)

    # QIDO-RS finds them in the source studies, in new series; WADO-RS gives back what was written
    for study, mine in ((chest_study, [*cls["results"], *seg["results"]]), (knee_study, kseg["results"])):
        found = {i["SOPInstanceUID"]: i for i in pacs.search_instances(study)}
        for r in mine:
            assert r["study_instance_uid"] == study and r["sop_instance_uid"] in found, r
            theirs = pacs.retrieve_instance(study, r["series_instance_uid"], r["sop_instance_uid"])
            assert _encoded(theirs) == _encoded(pydicom.dcmread(r["file"])), r["file"]
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in chest}
    report = read_classification_sr(next(r["file"] for r in cls["results"] if r["object"] == "SR"))
    assert {r["sop_instance_uid"] for r in report} == sources
    by_uid = {Path(r["file"]).stem: r for r in rows}  # the retrieved files are named by SOP Instance UID
    for image in report:
        row = by_uid[image["sop_instance_uid"]]
        assert {c: int(v["call"]) for c, v in image["findings"].items()} == {c: int(row[f"call_{c}"])
                                                                             for c in FINDINGS}

    # the knee SEG re-assembles to the mask the run wrote as NIfTI (slice-first for DICOM input)
    import nibabel as nib

    nifti = next((runs / "knee" / "inference" / "masks").glob("*.nii.gz"))
    got_knee = sorted((runs / "knee" / "studies").rglob("*.dcm"))
    assert np.array_equal(read_segmentation_mask(Path(kseg["results"][0]["file"]), got_knee),
                          (np.asarray(nib.load(nifti).dataobj) > 0).astype(np.uint8))

    for log in (log_cls, log_seg, log_knee):
        assert needles_in(runs, log) == []
