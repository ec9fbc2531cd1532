"""Test helpers for DICOM results: the real sample radiographs, a valid knee MR series, and dciodvfy."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

# identifying values planted in sources (as tests/bundles/_contract.PHI): the first three must be copied into the
# results (Patient module), the last two must not (they are not part of the Patient or General Study modules)
PHI = {"PatientName": "Qzyxwvut^Jovankamil", "PatientID": "PHI7319842", "PatientBirthDate": "19010203",
       "OtherPatientIDs": "ALTID55731", "InstitutionName": "Quuxbridge Infirmary"}
COPIED = ("Qzyxwvut^Jovankamil", "PHI7319842", "19010203")
NOT_COPIED = ("ALTID55731", "Quuxbridge")
NEEDLES = ("qzyxwvut", "jovankamil", "phi7319842", "19010203", "altid55731", "quuxbridge")


def sample_file(name: str) -> str:
    """A pydicom (or pydicom-data) test file, or skip when pydicom-data is not installed."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available (install pydicom-data)")
    return str(path)


def with_phi(source: str | Path, dest: Path, **changes) -> Path:
    """Copy a DICOM file with :data:`PHI` in its patient tags (and ``changes``; ``None`` deletes a tag)."""
    import pydicom

    ds = pydicom.dcmread(str(source))
    for key, value in {**PHI, **changes}.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def knee_series(folder: Path, n: int = 6, rows: int = 40, cols: int = 36, voxel_values: bool = True,
                study_instance_uid: str | None = None) -> list[Path]:
    """A valid sagittal MR series of the synthetic knee, files in shuffled order (``write_dicom_series``), with a
    Frame of Reference added (MR requires one) and pixel values that name their voxel:
    ``value = slice * rows * cols + row * cols + column``, slice counted along the slice normal. Accession
    Number (Type 2) stays absent, as in some real files: the writers must cope. ``voxel_values=False`` keeps the
    synthetic knee's own pixels (an exam for a classifier to look at); ``study_instance_uid`` files the series
    in that study (default a new one).
    """
    import pydicom
    from pydicom.uid import generate_uid

    from tests.bundles._contract import write_dicom_series

    write_dicom_series(folder, n=n, rows=rows, cols=cols, patient=PHI)
    frame_of_reference = generate_uid()
    files = sorted(folder.glob("*.dcm"))
    for f in files:
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1  # write_dicom_series puts slice k at x = 3k: k is the position order
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        if study_instance_uid:
            ds.StudyInstanceUID = study_instance_uid
        ds.StudyDate, ds.StudyTime, ds.PatientSex, ds.StudyID = "20240102", "101500", "F", "KNEE1"
        if voxel_values:
            ds.PixelData = (np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols) + k * rows * cols).tobytes()
        ds.save_as(f, enforce_file_format=True)
    return files


def voxel_value(k: int, r: int, c: int, rows: int = 40, cols: int = 36) -> int:
    """The pixel value :func:`knee_series` gives series voxel ``(k, r, c)``."""
    return k * rows * cols + r * cols + c


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dicom3tools' validator on a file: ``(errors, warnings)``.

    Skips when dciodvfy is not installed, unless ``MEDPLUGIN_REQUIRE_DICOM_TOOLS`` is set (CI installs
    dicom3tools and sets it, so a missing validator fails there).
    """
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("MEDPLUGIN_REQUIRE_DICOM_TOOLS"):
            pytest.fail("dciodvfy not found: apt-get install dicom3tools")
        pytest.skip("dciodvfy not found (apt-get install dicom3tools)")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert not any(line.startswith("Abort") for line in lines), lines
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def needles_in(folder: Path, text: str = "") -> list[str]:
    """Identifying values found in file/folder names under ``folder`` or in ``text`` (a log)."""
    found = []
    for p in folder.rglob("*"):
        name = str(p.relative_to(folder)).lower()
        found += [f"name {name}: {n}" for n in NEEDLES if n in name]
    found += [f"log: {n}" for n in NEEDLES if n in text.lower()]
    return found
