"""A Grad-CAM overlay as a DICOM Secondary Capture image (RGB), filed in its source's study, in a new series."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from medplugin.errors import BadInputError
from medplugin.io.dicom_results._common import (
    ModelInfo,
    Source,
    read_source,
    require_highdicom,
    save_result,
    source_name,
)

__all__ = ["write_cam_secondary_capture"]

logger = logging.getLogger(__name__)

_BIPED = set("APLRHF")
# SCImage argument <- source keyword: the Patient and General Study modules
_PATIENT_STUDY = {
    "patient_id": "PatientID", "patient_name": "PatientName", "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex", "accession_number": "AccessionNumber", "study_id": "StudyID",
    "study_date": "StudyDate", "study_time": "StudyTime", "referring_physician_name": "ReferringPhysicianName",
}
# paired body parts among DICOM's Body Part Examined defined terms (PS3.16 Annex L): their Laterality matters
_PAIRED = {
    "ANKLE", "ARM", "BREAST", "CLAVICLE", "EAR", "ELBOW", "EXTREMITY", "EYE", "FEMUR", "FINGER", "FOOT", "FOREARM",
    "HAND", "HEEL", "HIP", "HUMERUS", "KIDNEY", "KNEE", "LEG", "LOWER LIMB", "LUNG", "OVARY", "PATELLA",
    "RADIUS", "RIB", "SCAPULA", "SHOULDER", "THIGH", "TIBIA", "TOE", "ULNA", "UPPER LIMB", "WRIST",
}


def _letters(direction: np.ndarray) -> str:
    """The patient-orientation letter of a direction in LPS (its largest component): L/R, P/A, H/F."""
    axis = int(np.argmax(np.abs(direction)))
    pair = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
    return pair[0] if direction[axis] > 0 else pair[1]


def patient_orientation(header: Dataset) -> tuple[str, str] | None:
    """The (row, column) Patient Orientation letters of an image, from *Patient Orientation* or, failing that,
    from *Image Orientation (Patient)*; ``None`` when neither is there (the SC then records it as unknown).

    Multi-letter values (e.g. ``"LP"``, oblique) are reduced to their first, dominant letter, which is what
    highdicom accepts.
    """
    value = header.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v)[:1] in _BIPED for v in value):
        return str(value[0])[0], str(value[1])[0]
    iop = header.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        cos = np.asarray([float(v) for v in iop])
        return _letters(cos[:3]), _letters(cos[3:])
    return None


def _pixel_spacing(header: Dataset, shape: tuple[int, int]) -> tuple[float, float] | None:
    if shape != (int(header.Rows), int(header.Columns)):
        return None  # not on the source grid: no physical spacing can be claimed
    value = header.get("PixelSpacing")
    try:
        spacing = tuple(float(v) for v in value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return spacing if spacing and len(spacing) == 2 and min(spacing) > 0 else None


def write_cam_secondary_capture(
    source: Source | Sequence[Source],
    overlay: np.ndarray,
    class_name: str,
    model: ModelInfo,
    output_dir: str | os.PathLike,
    probability: float | None = None,
    series_instance_uid: str | None = None,
    series_number: int = 9902,
    instance_number: int = 1,
) -> Path:
    """Write a Grad-CAM overlay (for one class called positive) as an RGB Secondary Capture image.

    The image goes into the source's study (patient and study modules copied by highdicom from the source) in a
    new series; it references its source image(s) in *Source Image Sequence* and says what it shows in
    *Derivation Description*. Pass the same ``series_instance_uid`` for the overlays of one image so they share
    one series, with increasing ``instance_number``.

    Args:
        source: the image the overlay was made from; or several (e.g. the slices of a series behind a montage),
            the first giving patient, study and orientation.
        overlay: ``(rows, columns, 3)`` uint8 RGB, e.g. :func:`medplugin.visualize.overlay_cam` of the source
            image and its map on the source grid. On the source grid, the source's Pixel Spacing is kept (an
            enhanced source's from its functional groups: shared, else the frame's own).
        class_name: the class the map explains.
        model: the bundle's name and version.
        output_dir: the folder; the file is ``<SOP Instance UID>.dcm``.
        probability: the class's probability, written into the derivation description.
        series_instance_uid: the series to add the image to (a new one when ``None``).
        series_number: the series' number.
        instance_number: the image's number in its series.

    Returns:
        the written file.

    Raises:
        BadInputError: an unreadable source or one without identifiers (naming the file).
        ValueError: an overlay that is not ``(rows, columns, 3)`` uint8.
    """
    hd = require_highdicom()
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    headers = [read_source(s) for s in sources]
    header = headers[0]
    for s, h in zip(sources[1:], headers[1:]):
        if h.StudyInstanceUID != header.StudyInstanceUID:
            raise BadInputError(source_name(s), f"belongs to another study than {source_name(sources[0])}")
    overlay = np.asarray(overlay)
    if overlay.ndim != 3 or overlay.shape[2] != 3 or overlay.dtype != np.uint8:
        raise ValueError(f"overlay must be a (rows, columns, 3) uint8 RGB array, got shape {overlay.shape} "
                         f"dtype {overlay.dtype}.")
    orientation = patient_orientation(header)
    laterality = header.get("Laterality") or header.get("ImageLaterality")
    kwargs: dict[str, Any] = {}
    if str(laterality or "") in ("R", "L"):
        kwargs["laterality"] = str(laterality)
    # the patient and study modules of the source, explicitly (highdicom's from_ref_dataset would also copy the
    # source's acquisition equipment: institution, station, serial number)
    study = {key: header.get(keyword) or None for key, keyword in _PATIENT_STUDY.items()}
    if study["patient_sex"] not in ("M", "F", "O"):  # highdicom takes the enumerated values only
        study["patient_sex"] = None
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(overlay),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=header.StudyInstanceUID,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=int(instance_number),
        manufacturer=model.manufacturer,
        pixel_spacing=_pixel_spacing(header, overlay.shape[:2]),
        patient_orientation=orientation or ("L", "F"),  # replaced by an empty (unknown) value just below
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=model.description("Grad-CAM"),
        manufacturer_model_name=model.name[:64],
        software_versions=model.software_versions,
        **study,
        **kwargs,
    )
    if orientation is None:
        sc.PatientOrientation = None  # Type 2: present and empty means "not known"
    # General Series: the body part tells a reader (and dciodvfy) whether Laterality (Type 2C) is needed: known
    # laterality is copied above; an unknown one of a paired or unnamed part is present and empty ("unknown")
    body_part = str(header.get("BodyPartExamined") or "").strip().upper()
    if body_part:
        sc.BodyPartExamined = body_part
    if "laterality" not in kwargs and (not body_part or body_part in _PAIRED):
        sc.Laterality = None
    sc.ConversionType = "SYN"  # a synthetic image (highdicom says DI, a digital interface)
    sc.BurnedInAnnotation = "NO"  # the overlay carries no text
    p = f" (probability {float(probability):.3f})" if probability is not None else ""
    sc.DerivationDescription = f"Grad-CAM heat map of '{class_name}'{p} by {model.name} {model.version}"[:1024]
    sc.SourceImageSequence = hd.ReferencedImageSequence(referenced_images=headers)
    path = save_result(sc, output_dir, header)
    logger.info("wrote Secondary Capture %s: Grad-CAM of %s, %dx%d", path.name, class_name, *overlay.shape[:2])
    return path
