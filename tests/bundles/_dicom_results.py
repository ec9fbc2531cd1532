"""DICOM results of the classification bundles (issue 16), checked from a real inference run: ophthalmic DICOM
inputs to feed the retina bundles, and one check of what ``dicom_outputs.csv`` lists against predictions.csv."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.bundles._contract import PHI, phi_leaks

EYE = ("81745001", "SCT", "Eye")
OCT_SCANNER = ("392012008", "SCT", "Optical Coherence Tomography Scanner")
FUNDUS_CAMERA = ("409898007", "SCT", "Fundus Camera")


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def ophthalmic_image(dest: Path, pixels: np.ndarray, modality: str, study_instance_uid: str | None = None,
                     laterality: str = "R", patient: dict | None = None,
                     pixel_spacing: tuple[float, float] = (0.0039, 0.0117), spacing_per_frame: bool = False) -> Path:
    """Write ``pixels`` as the DICOM object an ophthalmic device stores, with :data:`PHI` (or ``patient``) planted.

    ``modality`` ``"OPT"``: a B-scan (``(rows, columns)`` uint8) as a one-frame Ophthalmic Tomography Image (enhanced
    multi-frame: functional groups, dimensions), or a volume of B-scans (``(frames, rows, columns)``) as one
    multi-frame Ophthalmic Tomography Image, as an OCT device stores a scan of the eye (B-scan ``k`` at in-stack
    position ``k``, 0.0117 mm from the last); its ``pixel_spacing`` (row, column mm) sits in the Pixel Measures
    functional group, shared by all frames or, with ``spacing_per_frame``, repeated in each frame's own groups.
    ``"OP"``: a colour fundus photograph (``(rows, columns, 3)`` uint8 RGB) as an Ophthalmic Photography 8 Bit
    Image. Each is a new series of ``study_instance_uid`` (a new study when ``None``), of the eye ``laterality``.
    dciodvfy finds the OP object free of errors; of the OPT object it reports only that the Ophthalmic Tomography
    Image module lists the Concatenation attributes as Type 1, which the Multi-frame Functional Groups module
    forbids outside a concatenation.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        OphthalmicPhotography8BitImageStorage,
        OphthalmicTomographyImageStorage,
        generate_uid,
    )

    tomography = modality == "OPT"
    if modality not in ("OPT", "OP"):
        raise ValueError(f"modality must be OPT or OP, got {modality!r}.")
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim not in ((2, 3) if tomography else (3,)):
        raise ValueError(f"an {modality} image needs {'(rows, columns)' if tomography else '(rows, columns, 3)'} "
                         f"pixels, got shape {pixels.shape}.")
    volume = tomography and pixels.ndim == 3
    frames = pixels.shape[0] if volume else 1
    sop = OphthalmicTomographyImageStorage if tomography else OphthalmicPhotography8BitImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_instance_uid or generate_uid(), generate_uid()
    for key, value in (PHI if patient is None else patient).items():
        setattr(ds, key, value)
    ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.StudyID = "F", "20240102", "101500", "EYE1"
    ds.AccessionNumber, ds.ReferringPhysicianName = None, None
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = modality, 1, 1, 1
    ds.Manufacturer, ds.ManufacturerModelName, ds.DeviceSerialNumber = "medplugin tests", "synthetic eye", "0001"
    ds.SoftwareVersions = "1"
    ds.ImageLaterality = laterality
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20240102", "101600", "20240102101600"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SynchronizationFrameOfReferenceUID = generate_uid()
    ds.SynchronizationTrigger, ds.AcquisitionTimeSynchronized = "NO TRIGGER", "N"
    ds.LossyImageCompression, ds.BurnedInAnnotation = "00", "NO"
    ds.AnatomicRegionSequence = Sequence([_code(*EYE)])
    ds.AcquisitionContextSequence = Sequence()
    for keyword in ("HorizontalFieldOfView", "RefractiveStateSequence", "EmmetropicMagnification",
                    "IntraOcularPressure", "PupilDilated", "LightPathFilterTypeStackCodeSequence"):
        setattr(ds, keyword, None)  # Type 2: present, not known
    ds.DetectorType = "CCD"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[1:3] if volume else pixels.shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if tomography:
        ds.AcquisitionDeviceTypeCodeSequence = Sequence([_code(*OCT_SCANNER)])
        ds.AxialLengthOfTheEye, ds.AcquisitionDuration, ds.PresentationLUTShape = None, 10.0, "IDENTITY"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = generate_uid(), ""
        dimensions = generate_uid()
        ds.DimensionOrganizationSequence = Sequence([Dataset()])
        ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = dimensions
        index = Dataset()
        index.DimensionIndexPointer, index.FunctionalGroupPointer = 0x00209057, 0x00209111  # in-stack position
        index.DimensionOrganizationUID = dimensions
        ds.DimensionIndexSequence = Sequence([index])
        def measures() -> Sequence:
            item = Dataset()
            item.PixelSpacing, item.SliceThickness = list(pixel_spacing), 0.0117
            return Sequence([item])

        shared = Dataset()
        if not spacing_per_frame:
            shared.PixelMeasuresSequence = measures()
        shared.FrameAnatomySequence = Sequence([Dataset()])
        shared.FrameAnatomySequence[0].AnatomicRegionSequence = Sequence([_code(*EYE)])
        shared.FrameAnatomySequence[0].FrameLaterality = laterality
        shared.PlaneOrientationSequence = Sequence([Dataset()])
        shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        per_frame = []
        for k in range(1, frames + 1):
            frame = Dataset()
            frame.FrameContentSequence = Sequence([Dataset()])
            content = frame.FrameContentSequence[0]
            content.StackID, content.InStackPositionNumber, content.DimensionIndexValues = "1", k, [k]
            content.FrameAcquisitionDateTime = content.FrameReferenceDateTime = "20240102101600"
            content.FrameAcquisitionDuration = 10.0
            frame.PlanePositionSequence = Sequence([Dataset()])
            frame.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0117 * (k - 1), 0.0]
            if spacing_per_frame:
                frame.PixelMeasuresSequence = measures()
            per_frame.append(frame)
        ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence = Sequence([shared]), Sequence(per_frame)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    else:
        ds.AcquisitionDeviceTypeCodeSequence = Sequence([_code(*FUNDUS_CAMERA)])
        ds.PatientOrientation = None  # Type 2C: not known
        for keyword in ("PatientEyeMovementCommanded", "IlluminationTypeCodeSequence",
                        "ImagePathFilterTypeStackCodeSequence", "LensesCodeSequence"):
            setattr(ds, keyword, None)
        ds.FrameIncrementPointer, ds.FrameTime = 0x00181063, 0.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = pixels.tobytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def _sources(file: str) -> list[Path]:
    """The DICOM files of a predictions.csv input: the file, or a series folder's ``.dcm`` files."""
    path = Path(file)
    return sorted(path.glob("*.dcm")) if path.is_dir() else [path]


def check_dicom_results(out: Path, class_names: Sequence[str], log: str, dicom_inputs: Iterable[str],
                        uncalled: Iterable[str] = ()) -> dict[str, dict]:
    """What a classification bundle's inference run ``out`` wrote for its DICOM inputs, against its predictions.csv.

    ``dicom_inputs`` are the inputs (predictions.csv's ``file``: a DICOM file or a series folder) that must get
    results; ``uncalled`` the classes model.json gives no operating point (the SR makes no call for them).
    Checked: ``dicom_outputs.csv`` lists no error, one SR per input and an SC per class the SR calls positive;
    every object passes dciodvfy without an error, is named by its SOP Instance UID in ``out/dicom``, files with
    its source's study and carries its patient (name, ID, birth date) but not the source's other identifying
    tags; one SR per study, each of whose inputs it records once, referencing every source instance, with
    predictions.csv's ``in_scope`` verdict and reason, each class's probability and (other than ``uncalled``) its
    call (``call_<class>``); each SC references its sources, keeps their laterality and explains a class called
    positive, with its probability; no planted patient value in a file name, in a file other than the DICOM
    results, or in the ``log``.
    Returns:
        by input: ``{"sr": its SR file, "entry": what :func:`read_classification_sr` reads of it there,
        "scs": its Secondary Capture files}``.
    """
    import pydicom

    from medplugin.io.dicom_results import read_classification_sr
    from tests.io._dicom_helpers import NOT_COPIED, dciodvfy

    rows = {r["file"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    listed = list(csv.DictReader((out / "dicom_outputs.csv").open()))
    assert all(r["error"] == "" for r in listed), listed
    inputs = sorted(dicom_inputs)
    assert sorted({r["file"] for r in listed}) == inputs, (sorted({r["file"] for r in listed}), inputs)
    uncalled = set(uncalled)
    by_input: dict[str, list[dict]] = {f: [r for r in listed if r["file"] == f] for f in inputs}
    studies: dict[str, set[str]] = {}
    results: dict[str, dict] = {}
    for file, objects in by_input.items():
        row = rows[file]
        assert row["error"] == "", row
        sources = [pydicom.dcmread(s, stop_before_pixels=True) for s in _sources(file)]
        source_uids = {str(s.SOPInstanceUID) for s in sources}
        first = sources[0]
        for r in objects:
            path = Path(r["dicom_file"])
            errors, _ = dciodvfy(path)
            assert errors == [], (r["object"], path, errors)
            obj = pydicom.dcmread(path)
            assert path == out / "dicom" / f"{obj.SOPInstanceUID}.dcm", path
            assert obj.StudyInstanceUID == first.StudyInstanceUID
            assert obj.SeriesInstanceUID not in {str(s.SeriesInstanceUID) for s in sources}  # a series of its own
            for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
                assert obj.get(keyword) == first.get(keyword), keyword
            text = repr(obj).lower()
            assert not [v for v in NOT_COPIED if v.lower() in text], (r["object"], NOT_COPIED)
        (sr,) = [r for r in objects if r["object"] == "SR"]
        studies.setdefault(str(first.StudyInstanceUID), set()).add(sr["dicom_file"])
        entries = [e for e in read_classification_sr(sr["dicom_file"]) if set(e["sop_instance_uids"]) & source_uids]
        assert len(entries) == 1, entries
        (entry,) = entries
        assert sorted(entry["sop_instance_uids"]) == sorted(source_uids)  # every slice of a series
        assert entry["sop_class_uid"] == str(first.SOPClassUID)
        assert entry["in_scope"] == (row["in_scope"] == "true"), (entry, row)
        assert entry["out_of_scope_reason"] == row["out_of_scope_reason"]
        assert list(entry["findings"]) == list(class_names)
        for c in class_names:
            finding = entry["findings"][c]
            assert finding["probability"] == pytest.approx(float(row[f"prob_{c}"]), abs=1e-5), (c, finding, row)
            if c in uncalled:
                assert finding["call"] is None, (c, finding)
            else:
                assert finding["call"] == (row[f"call_{c}"] == "1"), (c, finding, row)
        called = [c for c in class_names if entry["findings"][c]["call"]]
        scs = [pydicom.dcmread(r["dicom_file"]) for r in objects if r["object"] == "SC"]
        assert len(scs) == len(called), (file, called, len(scs))
        explained = []
        eye = first.get("ImageLaterality") or first.get("Laterality")
        for sc in scs:
            assert {str(i.ReferencedSOPInstanceUID) for i in sc.SourceImageSequence} == source_uids
            if eye in ("R", "L"):
                assert sc.Laterality == eye  # a left eye's map is filed as the left eye's
            explained += [c for c in class_names if sc.DerivationDescription.startswith(
                f"Grad-CAM heat map of '{c}' (probability {entry['findings'][c]['probability']:.3f})")]
        assert sorted(explained) == sorted(called), ([sc.DerivationDescription for sc in scs], called)
        assert len({sc.SeriesInstanceUID for sc in scs}) <= 1  # an input's overlays: one series
        results[file] = {"sr": Path(sr["dicom_file"]), "entry": entry,
                         "scs": [Path(r["dicom_file"]) for r in objects if r["object"] == "SC"]}
    assert all(len(srs) == 1 for srs in studies.values()), studies  # one SR per study ...
    assert len({f for srs in studies.values() for f in srs}) == len(studies)  # ... and a study per SR
    assert phi_leaks(out, log) == []
    return results


def model_calling(ckpt: Path, dest: Path, cls: str) -> Path:
    """A copy of the trained model folder ``ckpt`` at ``dest`` whose operating point for ``cls`` is 0: every input
    is called positive for it, so each gets at least one Secondary Capture."""
    import json
    import shutil

    shutil.copytree(ckpt, dest)
    meta = json.loads((dest / "model.json").read_text())
    meta["operating_points"][cls]["threshold"] = 0.0
    (dest / "model.json").write_text(json.dumps(meta))
    return dest
