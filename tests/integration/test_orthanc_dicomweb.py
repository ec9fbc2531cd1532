"""A round trip through a real PACS: Orthanc with its DICOMweb plugin, radiographs and a knee series stored in it,
studies retrieved with WADO-RS, SR/SC/SEG written for them and stored back with STOW-RS, found with QIDO-RS in
the source studies and identical to the files written locally."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
pytest.importorskip("dicomweb_client")

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
