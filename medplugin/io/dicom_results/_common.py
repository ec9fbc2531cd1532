"""What the DICOM result writers share: the model's identity, reading and checking source headers, saving.

Sources are read header-only (``stop_before_pixels``): the writers need the source's identifiers, patient and
study modules and geometry, never its pixels, so a compressed source needs no decoder here. Runs on pydicom 3
with highdicom >= 0.23 and on pydicom 2 with highdicom 0.22 (MONAI Label's environment); MONAI and torch are
not imported.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

import medplugin
from medplugin.errors import BadInputError
from medplugin.io._frames import pixel_spacing_value
from medplugin.utils import atomic_write

try:  # a declared dependency; imported here so that `medplugin.io` still imports in an environment without it
    import highdicom as hd
except ImportError:  # pragma: no cover - exercised only where highdicom is missing
    hd = None

__all__ = ["ModelInfo", "Source", "read_source", "read_series", "series_affine", "save_result", "result_path"]

logger = logging.getLogger(__name__)

Source = str | os.PathLike | Dataset
"""A source image: a DICOM file's path, or a pydicom dataset (e.g. one retrieved over DICOMweb)."""

PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])

# the private coding scheme of medplugin's own concepts (class names, the input gate); PS3.16 8.2: "99" prefix
PRIVATE_SCHEME = "99MEDPLUGIN"
# Type 2 elements of the Patient and General Study modules that the result objects copy from their source
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")
# what a result may take from its source's header (see _header_copy)
_KEPT = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    *_TYPE2_PATIENT_STUDY,
    "Modality", "SeriesNumber", "InstanceNumber", "BodyPartExamined", "Laterality", "ImageLaterality",
    "FrameOfReferenceUID", "PositionReferenceIndicator", "ImageOrientationPatient", "ImagePositionPatient",
    "PatientOrientation", "AnatomicalOrientationType", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation",
)


def require_highdicom() -> Any:
    """The highdicom module, or an ImportError that says how to install it."""
    if hd is None:
        raise ImportError(
            "writing DICOM results needs highdicom: pip install highdicom (highdicom 0.22 where pydicom is 2.x)"
        )
    return hd


@dataclass(frozen=True)
class ModelInfo:
    """Who made a result: the bundle (name and version) and how its outputs are turned into calls.

    Args:
        name: the bundle's name, e.g. ``chest_xray_classification`` (DICOM Manufacturer's Model Name).
        version: the bundle's version from ``configs/metadata.json`` (``version``).
        operating_points: ``{class: {"threshold": float, "criterion": str, "sensitivity": float,
            "specificity": float}}`` as recorded in ``model.json``; classes without one are called at 0.5
            (multi-label) or by the highest probability (multi-class).
        temperature: the temperature the probabilities were calibrated with (recorded as an algorithm
            parameter): one number, or ``{class: T}`` (a multi-label model scales each finding with its own);
            ``None`` when uncalibrated (the SR then says the probabilities are not calibrated).
        manufacturer: the DICOM Manufacturer of the results (the software's maker).
        series_description_prefix: put in front of each result series' description.
    """

    name: str
    version: str
    operating_points: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    temperature: float | Mapping[str, float] | None = None
    manufacturer: str = "medplugin"
    series_description_prefix: str = ""

    def __post_init__(self) -> None:
        for key in ("name", "version"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"ModelInfo.{key} must be a non-empty string, got {value!r}.")
        for cls, point in self.operating_points.items():
            if not isinstance(point, Mapping) or "threshold" not in point:
                raise ValueError(f"operating point of {cls!r} must be a mapping with a 'threshold', got {point!r}.")
            t = float(point["threshold"])
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"operating point threshold of {cls!r} must be in [0, 1], got {t!r}.")

    @classmethod
    def from_model_json(cls, name: str, version: str, meta: Mapping[str, Any] | None,
                        class_names: Sequence[str] | None = None, **kwargs: Any) -> ModelInfo:
        """Take ``operating_points`` and ``temperature`` from a parsed ``model.json`` (both optional there).

        A list of temperatures (one per finding of a multi-label model) becomes ``{class: T}`` with
        ``class_names`` (default ``meta["class_names"]``).

        Raises:
            ValueError: a list of temperatures whose length is not the number of classes.
        """
        meta = meta or {}
        temperature = meta.get("temperature")
        if isinstance(temperature, (list, tuple)):
            names = list(class_names if class_names is not None else meta.get("class_names") or [])
            if len(names) != len(temperature):
                raise ValueError(f"model.json has {len(temperature)} temperatures for {len(names)} classes.")
            temperature = {n: float(t) for n, t in zip(names, temperature)}
        return cls(name=name, version=version, operating_points=dict(meta.get("operating_points") or {}),
                   temperature=temperature, **kwargs)

    def temperature_of(self, cls: str | None) -> float | None:
        """The temperature of class ``cls`` (the model's one temperature when it has one for all)."""
        if isinstance(self.temperature, Mapping):
            value = self.temperature.get(cls) if cls is not None else None
            return None if value is None else float(value)
        return None if self.temperature is None else float(self.temperature)

    @property
    def software_versions(self) -> list[str]:
        """DICOM Software Versions: the bundle's version and medplugin's."""
        return [f"{self.name} {self.version}"[:64], f"medplugin {medplugin.__version__}"]

    @property
    def device_serial_number(self) -> str:
        """DICOM Device Serial Number (required by SEG): the bundle and version identify the "device"."""
        return f"{self.name}-{self.version}"[:64]

    def description(self, what: str) -> str:
        """A Series Description (LO, at most 64 characters)."""
        return f"{self.series_description_prefix}{what} {self.name} {self.version}".strip()[:64]


def source_name(source: Source) -> str:
    """How a source is named in errors and logs: its path, or the SOP Instance UID of an in-memory dataset."""
    if isinstance(source, Dataset):
        filename = getattr(source, "filename", None)
        if isinstance(filename, (str, os.PathLike)) and filename:
            return str(filename)
        return f"<dataset {source.get('SOPInstanceUID', 'without SOP Instance UID')}>"
    return str(source)


def _header_copy(ds: Dataset) -> Dataset:
    """The part of a source's header the results may take: identifiers, geometry, and the Patient and General
    Study modules' Type 1/2 elements (what the standard requires a result to copy). Nothing else can reach a
    result (highdicom would otherwise copy e.g. the Patient module's Type 3 elements, or the acquisition
    equipment's institution and station as Contributing Equipment). Elements are shared; ``ds`` is untouched.
    An enhanced (multi-frame layout) source keeps its Pixel Spacing in its functional groups: the copy gets it at
    the top level, from the shared groups, else the first frame's (:func:`read_source` takes one-frame images)."""
    out = Dataset()
    for keyword in _KEPT:
        if keyword in ds:
            out.add(ds[keyword])
    if "PixelSpacing" not in out:
        spacing = pixel_spacing_value(ds, frame=1)
        if spacing is not None:
            out.PixelSpacing = spacing
    if getattr(ds, "file_meta", None) is not None:
        out.file_meta = ds.file_meta
    for attr in ("is_little_endian", "is_implicit_VR"):  # pydicom 2 needs the encoding of a read dataset
        if PYDICOM_MAJOR < 3 and getattr(ds, attr, None) is not None:
            setattr(out, attr, getattr(ds, attr))
    out.filename = getattr(ds, "filename", None)
    return out


def _check_uid(name: str, ds: Dataset, keyword: str) -> None:
    value = ds.get(keyword)
    if value is None or not str(value).strip():
        raise BadInputError(name, f"{keyword} is missing: cannot file a result with this image")
    text = str(value)
    if len(text) > 64 or not all(part.isdigit() for part in text.split(".")):
        raise BadInputError(name, f"{keyword} {text!r} is not a valid DICOM UID")


def read_source(source: Source, image: bool = True) -> Dataset:
    """Read a source image's header and check what a result object needs from it.

    Args:
        source: a DICOM file's path or a pydicom dataset.
        image: the source must be an image (Rows, Columns); ``False`` for objects that only need identifiers.

    Returns:
        the identifiers, geometry and Patient/General Study Type 1/2 elements only (a new dataset sharing
        their elements: the caller's dataset is never changed).

    Raises:
        BadInputError: ``"<file>: <reason>"`` when the file is missing, not DICOM, or lacks an identifier (SOP
            Class/Instance, Study, Series Instance UID) or, for an image, its Rows and Columns.
    """
    name = source_name(source)
    if isinstance(source, Dataset):
        ds = _header_copy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise BadInputError(path, "file not found" if not path.exists() else "not a file")
        try:
            ds = _header_copy(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as e:  # noqa: BLE001 - InvalidDicomError, EOF, struct errors of a damaged file
            raise BadInputError(path, f"not a readable DICOM file ({type(e).__name__})") from e
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        _check_uid(name, ds, keyword)
    for keyword in _TYPE2_PATIENT_STUDY:  # absent (a non-conformant source) is recorded as present and empty
        if keyword not in ds:
            setattr(ds, keyword, None)
    if image:
        for keyword in ("Rows", "Columns"):
            value = ds.get(keyword)
            if value is None or int(value) < 1:
                raise BadInputError(name, f"{keyword} is missing or not positive ({value!r}): not an image")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise BadInputError(name, f"a multi-frame image ({frames} frames): results are written for single-frame "
                                "images and series of them only")
    return ds


def _orientation(ds: Dataset) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    return np.asarray([float(v) for v in iop], dtype=np.float64)


def read_series(sources: Sequence[Source]) -> list[Dataset]:
    """Read the headers of one image series and sort them by position along the slice normal.

    The order is the series' slice order used everywhere in medplugin's DICOM results: ascending
    ``dot(ImagePositionPatient, normal)`` with ``normal = row_cosines x column_cosines`` (from Image
    Orientation (Patient)); it does not depend on file names, file order or Instance Number.

    Args:
        sources: the files (or datasets) of one series, in any order.

    Returns:
        the headers (no pixel data), sorted.

    Raises:
        BadInputError: naming the file, when a slice lacks a Frame of Reference UID, Image Position/Orientation
            (Patient) or Pixel Spacing, belongs to another series or frame of reference, has another orientation
            or size, or shares its position with another slice; naming the first file when there are no sources.
    """
    if not sources:
        raise BadInputError(None, "an empty series: no DICOM files given")
    headers = [read_source(s) for s in sources]
    names = [source_name(s) for s in sources]
    first, first_name = headers[0], names[0]
    for ds, name in zip(headers, names):
        for keyword in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if ds.get(keyword) in (None, "", []):
                raise BadInputError(name, f"{keyword} is missing: a series slice must carry its geometry")
        try:
            spacing = [float(v) for v in ds.PixelSpacing]
        except (TypeError, ValueError):
            spacing = []
        if len(spacing) != 2 or min(spacing) <= 0:
            raise BadInputError(name, f"Pixel Spacing {list(ds.PixelSpacing)} is not two positive numbers")
        if ds.SeriesInstanceUID != first.SeriesInstanceUID:
            raise BadInputError(name, f"belongs to another series than {first_name} (Series Instance UID differs)")
        if ds.FrameOfReferenceUID != first.FrameOfReferenceUID:
            raise BadInputError(name, f"has another Frame of Reference UID than {first_name}")
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            raise BadInputError(name, f"size {int(ds.Rows)}x{int(ds.Columns)} differs from {first_name}'s "
                                f"{int(first.Rows)}x{int(first.Columns)}")
        if not np.allclose(_orientation(ds), _orientation(first), atol=1e-4):
            raise BadInputError(name, f"Image Orientation (Patient) {list(ds.ImageOrientationPatient)} differs from "
                                f"{first_name}'s {list(first.ImageOrientationPatient)}")
    iop = _orientation(first)
    normal = np.cross(iop[:3], iop[3:])
    positions = [float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in headers]
    order = np.argsort(positions, kind="stable")
    sorted_pos = np.asarray(positions)[order]
    dup = np.nonzero(np.diff(sorted_pos) < 1e-4)[0]
    if dup.size:
        i = order[dup[0] + 1]
        raise BadInputError(names[i], f"has the same slice position as {names[order[dup[0]]]} "
                            f"({sorted_pos[dup[0]]:.3f} mm along the normal): two slices in one place")
    return [headers[i] for i in order]


def series_affine(headers: Sequence[Dataset]) -> np.ndarray:
    """The 4x4 matrix mapping ``(slice, row, column, 1)`` indices of a sorted series to RAS millimetres.

    Args:
        headers: the series as :func:`read_series` returns it (sorted), or a single slice.

    Returns:
        the affine, RAS (nibabel/MONAI convention): DICOM's LPS x and y negated.
    """
    first = headers[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    origin = np.asarray([float(v) for v in first.ImagePositionPatient])
    if len(headers) > 1:
        last = np.asarray([float(v) for v in headers[-1].ImagePositionPatient])
        slice_step = (last - origin) / (len(headers) - 1)
    else:
        slice_step = np.cross(iop[:3], iop[3:]) * float(first.get("SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = slice_step
    lps[:3, 1] = iop[3:] * row_spacing  # a step to the next row goes along the column direction cosines
    lps[:3, 2] = iop[:3] * col_spacing
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def result_path(output_dir: str | os.PathLike, dataset: Dataset) -> Path:
    """Where a result object goes: ``<output_dir>/<SOP Instance UID>.dcm`` (no patient data in the name)."""
    return Path(output_dir) / f"{dataset.SOPInstanceUID}.dcm"


def save_result(dataset: Dataset, output_dir: str | os.PathLike, source: Dataset | None = None) -> Path:
    """Write a highdicom object as a DICOM file (preamble and file meta), atomically; return its path.

    The source's Specific Character Set is declared when the object lacks one (highdicom 0.22 never sets it),
    so that copied names with non-ASCII characters are encoded as in the source.
    """
    if source is not None and "SpecificCharacterSet" not in dataset and source.get("SpecificCharacterSet"):
        dataset.SpecificCharacterSet = source.SpecificCharacterSet
    path = result_path(output_dir, dataset)
    if PYDICOM_MAJOR >= 3:
        atomic_write(path, lambda tmp: dataset.save_as(tmp, enforce_file_format=True))
    else:  # pragma: no cover - pydicom 2 (MONAI Label's environment)
        atomic_write(path, lambda tmp: dataset.save_as(tmp, write_like_original=False))
    return path


def short_code_value(name: str) -> str:
    """A Code Value (SH, at most 16 characters) for a name: the name itself when it fits, else its first 11
    characters, a dash and 4 hex digits of its CRC-32 (stable). A Long Code Value is avoided: highdicom 0.22
    cannot search SR content whose concept names use one."""
    if len(name) <= 16:
        return name
    return f"{name[:11]}-{zlib.crc32(name.encode('utf-8')) & 0xFFFF:04x}"


def private_code(value: str, meaning: str) -> Any:
    """A concept of medplugin's private coding scheme (:data:`PRIVATE_SCHEME`); long values are shortened."""
    return require_highdicom().sr.CodedConcept(value=short_code_value(value), scheme_designator=PRIVATE_SCHEME,
                                               meaning=meaning[:64])


def coding_schemes() -> list:
    """The Coding Scheme Identification item of the private scheme, for the objects that use it."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return [CodingSchemeIdentificationItem(designator=PRIVATE_SCHEME, name="medplugin model outputs",
                                           responsible_organization="medplugin")]
