"""DICOM results (SR, Secondary Capture, SEG) written with highdicom for real radiographs and a knee MR series,
checked with dicom3tools' dciodvfy, read back with pydicom and highdicom."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from medplugin.errors import BadInputError  # noqa: E402
from medplugin.io.dicom_results import (  # noqa: E402
    ACL_REGION,
    LUNGS,
    ImageClassification,
    ModelInfo,
    calls_at_operating_points,
    read_classification_sr,
    read_segmentation_mask,
    write_cam_secondary_capture,
    write_classification_sr,
    write_segmentation,
)
from tests.io._dicom_helpers import (  # noqa: E402
    COPIED,
    NOT_COPIED,
    dciodvfy,
    knee_series,
    needles_in,
    sample_file,
    voxel_value,
    with_phi,
)

CHEST_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                  "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
PROBS = dict(zip(CHEST_FINDINGS, np.round(np.linspace(0.02, 0.93, 14), 6).tolist()))
CHEST = ModelInfo("chest_xray_classification", "0.4.0", operating_points={
    "Effusion": {"threshold": 0.1, "criterion": "youden", "sensitivity": 0.9, "specificity": 0.78},
    "Pleural_Thickening": {"threshold": 0.95, "criterion": "sensitivity>=0.8", "sensitivity": 0.8,
                           "specificity": 0.6},
}, temperature=1.7)
LUNG = ModelInfo("lung_xray_segmentation", "0.3.0")
KNEE = ModelInfo("knee_mri_segmentation", "0.2.0")
# what dciodvfy may warn about: our private coding scheme, and the source's own one-component referring physician
ALLOWED_WARNINGS = ("Unrecognized defined term <99MEDPLUGIN>", "Referring Physician's Name")


@pytest.fixture(params=["RG1_UNCR.dcm", "RG1_J2KR.dcm"], ids=["uncompressed", "jpeg2000"])
def chest_cr(request, tmp_path) -> Path:
    """A real PA chest CR (pydicom-data), with identifying values planted in its patient tags."""
    return with_phi(sample_file(request.param), tmp_path / "in" / "chest.dcm")


def _valid(path: Path) -> list[str]:
    errors, warnings = dciodvfy(path)
    assert errors == [], errors
    unexpected = [w for w in warnings if not any(a in w for a in ALLOWED_WARNINGS)]
    assert unexpected == [], unexpected
    return warnings


def _filed_with(result: Path, source: Path) -> pydicom.Dataset:
    """The result belongs to the source's study, in a new series, with the source's patient; nothing else copied."""
    ds, src = pydicom.dcmread(result), pydicom.dcmread(source, stop_before_pixels=True)
    assert result.name == f"{ds.SOPInstanceUID}.dcm"
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "StudyDate", "StudyTime"):
        assert str(ds.get(keyword) or "") == str(src.get(keyword) or ""), keyword  # absent: present and empty
        assert keyword in ds
    raw = result.read_bytes()
    assert all(v.encode() in raw for v in COPIED)
    assert not any(v.encode() in raw for v in NOT_COPIED)  # Other Patient IDs, Institution Name: not copied
    return ds


def test_sr_for_a_real_chest_radiograph(chest_cr, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    path = write_classification_sr([ImageClassification(chest_cr, PROBS)], CHEST, out)
    assert path.parent == out
    _valid(path)
    ds = _filed_with(path, chest_cr)
    src = pydicom.dcmread(chest_cr, stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [e.ReferencedSOPInstanceUID for e in evidence] == [src.SOPInstanceUID]

    # highdicom parses it as a TID 1500 report: one gate group and one group per finding, each on the source image
    report = hd.sr.srread(path).content
    groups = report.get_image_measurement_groups()
    assert len(groups) == 1 + len(PROBS)
    for group in groups:
        assert [s.referenced_sop_instance_uid for s in group.source_images] == [src.SOPInstanceUID]
    by_finding = {g.finding_type.meaning: g for g in groups}
    effusion = by_finding["Effusion"]
    assert {m.name.meaning: m.value for m in effusion.get_measurements()} == pytest.approx(
        {"Probability": PROBS["Effusion"], "Threshold Value": 0.1})
    assert [(q.name.meaning, q.value.meaning) for q in effusion.get_qualitative_evaluations()] == [
        ("Effusion", "Present")]
    assert by_finding["Pleural_Thickening"].finding_type.value != "Pleural_Thickening"  # shortened to 16 chars
    texts = [str(i.TextValue) for i in effusion[0].ContentSequence if i.ValueType == "TEXT"]
    for expected in ("chest_xray_classification", "0.4.0", "operating point criterion=youden", "temperature=1.7"):
        assert expected in texts

    # our reader gives back the probabilities, thresholds and calls at the operating points
    (image,) = read_classification_sr(path)
    assert image["sop_instance_uid"] == src.SOPInstanceUID and image["sop_class_uid"] == src.SOPClassUID
    assert image["in_scope"] is True and image["out_of_scope_reason"] == ""
    assert {c: v["probability"] for c, v in image["findings"].items()} == pytest.approx(PROBS, abs=1e-9)
    expected_calls = {c: p >= CHEST.operating_points.get(c, {"threshold": 0.5})["threshold"] for c, p in PROBS.items()}
    assert {c: v["call"] for c, v in image["findings"].items()} == expected_calls
    assert expected_calls["Effusion"] and not expected_calls["Pleural_Thickening"]  # thresholds 0.1, 0.95 matter
    assert image["findings"]["Effusion"]["threshold"] == 0.1 and image["findings"]["Mass"]["threshold"] is None
    assert needles_in(out, caplog.text) == []


def test_sr_records_the_gate(tmp_path):
    src = with_phi(sample_file("RG1_UNCR.dcm"), tmp_path / "in" / "a.dcm")
    reason = "ViewPosition is LL, expected PA or AP"
    warned = ImageClassification(src, PROBS, in_scope=False, out_of_scope_reason=reason, ood_score=250.5,
                                 ood_threshold=120.0)
    refused = ImageClassification(src, None, in_scope=False, out_of_scope_reason=reason)
    (w,) = read_classification_sr(write_classification_sr([warned], CHEST, tmp_path / "w"))
    assert w["in_scope"] is False and w["out_of_scope_reason"] == reason and w["ood_score"] == 250.5
    assert len(w["findings"]) == len(PROBS)  # gate: warn keeps the probabilities
    path = write_classification_sr([refused], CHEST, tmp_path / "r")
    _valid(path)
    (r,) = read_classification_sr(path)
    assert r["in_scope"] is False and r["out_of_scope_reason"] == reason and r["findings"] == {}  # refuse: none


def test_sr_per_study_with_several_images_and_a_foreign_image(tmp_path):
    a = with_phi(sample_file("RG1_UNCR.dcm"), tmp_path / "in" / "a.dcm")
    b = with_phi(sample_file("RG1_J2KR.dcm"), tmp_path / "in" / "b.dcm")  # same study, another instance
    path = write_classification_sr([ImageClassification(a, PROBS), ImageClassification(b, {"Mass": 0.9})],
                                   CHEST, tmp_path / "out")
    _valid(path)
    images = read_classification_sr(path)
    assert [i["sop_instance_uid"] for i in images] == [pydicom.dcmread(p).SOPInstanceUID for p in (a, b)]
    assert images[1]["findings"] == {"Mass": {"probability": 0.9, "threshold": None, "call": True}}
    other = with_phi(sample_file("RG3_UNCR.dcm"), tmp_path / "in" / "other.dcm")  # another study
    with pytest.raises(BadInputError, match=r"other\.dcm: belongs to another study than .*a\.dcm"):
        write_classification_sr([ImageClassification(a, PROBS), ImageClassification(other, PROBS)], CHEST,
                                tmp_path / "out2")
    with pytest.raises(ValueError, match=r"probability of 'Mass' must be in \[0, 1\], got 1.5"):
        write_classification_sr([ImageClassification(a, {"Mass": 1.5})], CHEST, tmp_path / "out3")


def test_sr_for_a_knee_series_classified_as_a_volume(tmp_path):
    files = knee_series(tmp_path / "knee")
    probs = {"healthy": 0.1, "minor_strain": 0.2, "partial_rupture": 0.6, "complete_rupture": 0.1}
    knee = ModelInfo("knee_mri_classification", "0.5.0")
    path = write_classification_sr([ImageClassification(files, probs)], knee, tmp_path / "out", multilabel=False)
    _valid(path)
    _filed_with(path, files[0])
    (volume,) = read_classification_sr(path)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert set(volume["sop_instance_uids"]) == uids and len(volume["sop_instance_uids"]) == 6
    assert {c: v["call"] for c, v in volume["findings"].items()} == {
        "healthy": False, "minor_strain": False, "partial_rupture": True, "complete_rupture": False}


def test_calls_multilabel_and_multiclass():
    model = ModelInfo("m", "1", operating_points={"b": {"threshold": 0.2}})
    assert calls_at_operating_points({"a": 0.6, "b": 0.25, "c": 0.4}, model) == {"a": True, "b": True, "c": False}
    assert calls_at_operating_points({"a": 0.5, "c": 0.3, "d": 0.2}, model, multilabel=False) == {
        "a": True, "c": False, "d": False}
    with pytest.raises(ValueError, match=r"threshold of 'x' must be in \[0, 1\], got 2.0"):
        ModelInfo("m", "1", operating_points={"x": {"threshold": 2.0}})
    with pytest.raises(ValueError, match="ModelInfo.version must be a non-empty string, got ''"):
        ModelInfo("m", "")


def test_secondary_capture_of_a_cam_overlay(chest_cr, tmp_path, caplog):
    from medplugin.io import read_dicom_image
    from medplugin.visualize import overlay_cam

    caplog.set_level(logging.DEBUG)
    image, _ = read_dicom_image(chest_cr)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    cam = np.exp(-(((yy - 900) / 300.0) ** 2 + ((xx - 1300) / 250.0) ** 2))  # a hot spot lower right
    overlay = overlay_cam(image, cam)
    out = tmp_path / "out"
    first = write_cam_secondary_capture(chest_cr, overlay, "Effusion", CHEST, out, probability=0.41)
    series = str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)
    second = write_cam_secondary_capture(chest_cr, overlay[::-1].copy(), "Mass", CHEST, out,
                                         series_instance_uid=series, instance_number=2)
    src = pydicom.dcmread(chest_cr, stop_before_pixels=True)
    for path, pixels in ((first, overlay), (second, overlay[::-1])):
        _valid(path)
        ds = _filed_with(path, chest_cr)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.PhotometricInterpretation == "RGB"
        assert np.array_equal(ds.pixel_array, pixels)
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert list(ds.PatientOrientation) == list(src.PatientOrientation)
        assert str(ds.SeriesInstanceUID) == series
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    assert "'Effusion' (probability 0.410)" in ds.DerivationDescription and "chest_xray_classification" in \
        ds.SeriesDescription
    assert "PixelSpacing" not in ds  # the source's 0\0 is no spacing
    with pytest.raises(ValueError, match=r"overlay must be a \(rows, columns, 3\) uint8 RGB array, got shape "
                                         r"\(4, 4\) dtype float64"):
        write_cam_secondary_capture(chest_cr, np.zeros((4, 4)), "Mass", CHEST, out)
    assert needles_in(out, caplog.text) == []


@pytest.mark.parametrize("per_frame", [False, True], ids=["shared", "per-frame"])
def test_secondary_capture_of_an_oct_b_scan_keeps_the_pixel_spacing_of_its_functional_groups(tmp_path, per_frame):
    """A B-scan as an OCT device stores it (a one-frame enhanced Ophthalmic Tomography Image) has its Pixel Spacing
    only in its functional groups (shared, or the frame's own): the Grad-CAM Secondary Capture on its grid carries
    it (dciodvfy: no error), with the eye and the source reference; an overlay of another size claims none; an OCT
    volume of several B-scans in one file is refused, naming the file and its frame count."""
    from tests.bundles._dicom_results import ophthalmic_image

    oct_model = ModelInfo("retina_oct_classification", "0.3.0", operating_points={"CNV": {"threshold": 0.5}})
    scan = np.tile(np.linspace(0, 250, 48, dtype=np.uint8), (40, 1))
    src = ophthalmic_image(tmp_path / "in" / "bscan.dcm", scan, "OPT", laterality="L", pixel_spacing=(0.0039, 0.0117),
                           spacing_per_frame=per_frame)
    header = pydicom.dcmread(src, stop_before_pixels=True)
    assert "PixelSpacing" not in header  # only in the functional groups, as a device writes it
    overlay = np.zeros((40, 48, 3), np.uint8)
    overlay[5:12, 6:20, 0] = 255
    out = tmp_path / "out"
    path = write_cam_secondary_capture(src, overlay, "CNV", oct_model, out, probability=0.8)
    _valid(path)
    ds = _filed_with(path, src)
    assert [float(v) for v in ds.PixelSpacing] == [0.0039, 0.0117]
    assert np.array_equal(ds.pixel_array, overlay) and ds.Laterality == "L"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    other = write_cam_secondary_capture(src, np.ascontiguousarray(overlay[:20]), "CNV", oct_model, out)
    assert "PixelSpacing" not in pydicom.dcmread(other, stop_before_pixels=True)  # not the source grid
    volume = ophthalmic_image(tmp_path / "in" / "volume.dcm", np.stack([scan, scan[::-1], scan]), "OPT")
    with pytest.raises(BadInputError, match=r"volume\.dcm: a multi-frame image \(3 frames\)"):
        write_cam_secondary_capture(volume, overlay, "CNV", oct_model, out)


def _lungs(rows: int, cols: int) -> np.ndarray:
    """Two lungs of different size, so that a flip or a transpose would show."""
    yy, xx = np.mgrid[:rows, :cols]
    right = ((yy - rows * 0.45) / (rows * 0.25)) ** 2 + ((xx - cols * 0.3) / (cols * 0.12)) ** 2 <= 1
    left = ((yy - rows * 0.5) / (rows * 0.18)) ** 2 + ((xx - cols * 0.68) / (cols * 0.09)) ** 2 <= 1
    return (right | left).astype(np.uint8)


def test_seg_of_the_lungs_on_a_real_radiograph(chest_cr, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    src = pydicom.dcmread(chest_cr, stop_before_pixels=True)
    mask = _lungs(int(src.Rows), int(src.Columns))
    out = tmp_path / "out"
    path = write_segmentation(chest_cr, mask, [LUNGS], LUNG, out)
    _valid(path)
    ds = _filed_with(path, chest_cr)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.SegmentationType == "BINARY"
    assert "FrameOfReferenceUID" not in ds  # a CR has none: the SEG lies pixel for pixel on the image
    assert list(ds.PatientOrientation) == list(src.PatientOrientation)
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "Lungs" and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"
    assert segment.SegmentAlgorithmName == "lung_xray_segmentation"
    # frames re-assemble to the mask: with pydicom alone, and with highdicom
    assert np.array_equal(read_segmentation_mask(path, chest_cr), mask)
    seg = hd.seg.segread(path)
    assert [u[2] for u in seg.get_source_image_uids()] == [src.SOPInstanceUID]
    pixels = seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1])
    assert np.array_equal(pixels[0, :, :, 0], mask)
    assert needles_in(out, caplog.text) == []


def test_seg_of_a_knee_series_in_shuffled_files(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    files = knee_series(tmp_path / "knee")  # file names do not follow the slice order
    order = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
    assert order != sorted(order)
    mask = np.zeros((6, 40, 36), np.uint8)  # series order: slices along the normal, stored rows and columns
    mask[1:4, 5:15, 20:30] = 1
    mask[4, 30, 2] = 1  # one voxel off the box: any flip or transpose moves it
    out = tmp_path / "out"
    path = write_segmentation(files, mask, [ACL_REGION], KNEE, out)
    _valid(path)
    ds = _filed_with(path, files[0])
    assert ds.FrameOfReferenceUID == pydicom.dcmread(files[0], stop_before_pixels=True).FrameOfReferenceUID
    assert int(ds.NumberOfFrames) == 6  # one frame per source slice, empty frames kept
    # each frame references its slice, and the mask lies on the voxels whose values name them
    by_uid = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in files}
    frames = hd.seg.segread(path)
    seen = set()
    for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        source = by_uid[uid]
        k = int(source.InstanceNumber) - 1
        frame = frames.get_frame(n) if hasattr(frames, "get_frame") else frames.pixel_array[n - 1]
        values = source.pixel_array[frame.astype(bool)]
        rows, cols = np.nonzero(mask[k])
        assert sorted(values.tolist()) == sorted(voxel_value(k, r, c) for r, c in zip(rows, cols))
        seen.add(uid)
    assert seen == set(by_uid)
    assert np.array_equal(read_segmentation_mask(path, files[::-1]), mask)  # any file order
    assert needles_in(out, caplog.text) == []


@pytest.mark.parametrize("reader", ["monai_itk", "medplugin_sagittal"])
def test_seg_from_a_mask_in_a_reader_layout(tmp_path, reader):
    """A mask on a reader's layout of the series (MONAI's (x, y, z), medplugin's sagittal slices-first) with its
    affine lands on the same voxels: the source values under it are the values the reader saw under it."""
    files = knee_series(tmp_path / "knee")
    if reader == "monai_itk":
        from monai.transforms import LoadImage

        img = LoadImage(reader="ITKReader", image_only=True)(str(tmp_path / "knee"))
        volume, affine = np.asarray(img), np.asarray(img.affine)
    else:
        from medplugin.io.mrnet import read_knee_volume

        volume, affine = read_knee_volume(tmp_path / "knee")
    mask = np.zeros(volume.shape, np.uint8)
    mask[tuple(slice(s // 4, s // 4 + max(2, s // 3)) for s in volume.shape)] = 1
    mask[tuple(s - 1 for s in volume.shape)] = 1  # a far corner
    expected = sorted(np.rint(volume[mask.astype(bool)]).astype(int).tolist())
    path = write_segmentation(files, mask, [ACL_REGION], KNEE, tmp_path / "out", mask_affine=affine)
    seg_mask = read_segmentation_mask(path, files)
    from medplugin.io.dicom_results import read_series

    stack = np.stack([pydicom.dcmread(h.filename).pixel_array for h in read_series(files)])
    assert sorted(stack[seg_mask.astype(bool)].astype(int).tolist()) == expected
    assert int(seg_mask.sum()) == int(mask.sum())


def test_masks_that_do_not_fit_are_refused(tmp_path):
    files = knee_series(tmp_path / "knee")
    with pytest.raises(ValueError, match=r"mask shape \(5, 40, 36\) is not the series' \(slices, Rows, Columns\) "
                                         r"\(6, 40, 36\)"):
        write_segmentation(files, np.zeros((5, 40, 36)), [ACL_REGION], KNEE, tmp_path / "o")
    from medplugin.io.dicom_results import read_series, series_affine

    affine = series_affine(read_series(files))
    resampled = affine @ np.diag([1.0, 2.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"is not on the series' voxel grid .* resample it onto the source series"):
        write_segmentation(files, np.zeros((6, 20, 18)), [ACL_REGION], KNEE, tmp_path / "o", mask_affine=resampled)
    with pytest.raises(ValueError, match=r"mask labels must be in 0..1 \(one per segment\), got 0..2"):
        write_segmentation(files, np.pad(np.full((1, 1, 1), 2), ((0, 5), (0, 39), (0, 35))), [ACL_REGION], KNEE,
                           tmp_path / "o")
    cr = sample_file("RG1_UNCR.dcm")
    with pytest.raises(ValueError, match=r"mask shape \(1841, 1955\) is not the image's \(Rows, Columns\) "
                                         r"\(1955, 1841\) \(transposed\? a MONAI reader gives \(W, H\): pass mask.T\)"):
        write_segmentation(cr, np.zeros((1841, 1955)), [LUNGS], LUNG, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_bad_sources_name_the_file_and_the_reason(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(BadInputError, match=r"nowhere\.dcm: file not found"):
        write_classification_sr([ImageClassification(tmp_path / "nowhere.dcm", PROBS)], CHEST, out)
    text = tmp_path / "notes.dcm"
    text.write_text("not a DICOM file")
    with pytest.raises(BadInputError, match=r"notes\.dcm: not a readable DICOM file"):
        write_cam_secondary_capture(text, np.zeros((4, 4, 3), np.uint8), "Mass", CHEST, out)
    no_study = with_phi(sample_file("RG1_UNCR.dcm"), tmp_path / "in" / "nostudy.dcm", StudyInstanceUID=None)
    with pytest.raises(BadInputError, match=r"nostudy\.dcm: StudyInstanceUID is missing"):
        write_segmentation(no_study, np.zeros((1955, 1841)), [LUNGS], LUNG, out)
    # write_dicom_series' raw files carry no Frame of Reference, which an MR (and a SEG on it) must have
    from tests.bundles._contract import write_dicom_series

    raw = sorted(write_dicom_series(tmp_path / "raw").glob("*.dcm"))
    with pytest.raises(BadInputError, match=r"IM\d{4}\.dcm: FrameOfReferenceUID is missing"):
        write_segmentation(raw, np.zeros((6, 40, 36)), [ACL_REGION], KNEE, out)
    files = knee_series(tmp_path / "knee")
    twin = with_phi(files[0], tmp_path / "knee" / "twin.dcm", SOPInstanceUID="1.2.3.4.5")  # same position
    with pytest.raises(BadInputError, match=r"has the same slice position as .*: two slices in one place"):
        write_segmentation([*files, twin], np.zeros((7, 40, 36)), [ACL_REGION], KNEE, out)
    assert not out.exists()  # nothing half-written


def test_non_ascii_patient_names_keep_their_character_set(tmp_path):
    src = with_phi(sample_file("RG1_UNCR.dcm"), tmp_path / "in" / "a.dcm", PatientName="Müller^Jörg",
                   SpecificCharacterSet="ISO_IR 100")
    out = tmp_path / "out"
    paths = [write_classification_sr([ImageClassification(src, {"Mass": 0.2})], CHEST, out),
             write_cam_secondary_capture(src, np.zeros((8, 8, 3), np.uint8), "Mass", CHEST, out),
             write_segmentation(src, np.ones((1955, 1841), np.uint8), [LUNGS], LUNG, out)]
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SpecificCharacterSet == "ISO_IR 100" and str(ds.PatientName) == "Müller^Jörg"
        assert "Müller".encode("latin-1") in path.read_bytes()
