"""DICOM radiographs (CR, DX) and other single-frame grayscale or colour DICOM images, read for display.

The reader turns a DICOM file into the picture a radiologist would see on a viewer, as a float32 array in
0..255, and a small metadata dict that never holds patient data.

Intensity pipeline of :func:`read_dicom_image` (grayscale, DICOM PS3.4 Annex N order):

1. decode the stored values (of a multi-frame object, only the frame asked for: see below);
2. Modality LUT: *Modality LUT Sequence*, else *Rescale Slope/Intercept*
   (:func:`pydicom.pixels.apply_modality_lut`);
3. VOI: the *VOI LUT Sequence* when present, else the first *Window Center/Width* pair
   (:func:`pydicom.pixels.apply_voi_lut` semantics, ``prefer_lut=True``);
4. scale to 0..255: a window maps its own output range (``y_min..y_max`` as the DICOM standard and pydicom
   define it from *Bits Stored*, *Pixel Representation* and the rescale) linearly onto 0..255, so that values
   below the window are 0 and above it 255; a VOI LUT maps the range of its LUT data onto 0..255; without any
   VOI (or with an invalid window, logged) the image's own minimum and maximum after the Modality LUT map onto
   0 and 255 (a constant image gives all zeros);
5. MONOCHROME1 (higher stored value = darker) is inverted, ``255 - x``, so that higher always means brighter.
   *Presentation LUT Shape* is not read: in CR/DX it only restates the photometric interpretation.

Colour images (RGB, YBR_* are converted to RGB by pydicom, PALETTE COLOR through its lookup table) are
returned as (H, W, 3), scaled by their nominal maximum ``2**bits - 1`` to 0..255, without VOI.

A multi-frame object of more than one frame (e.g. an OCT volume: every B-scan of an eye in one Ophthalmic
Tomography Image) is not one 2-D image: it is refused with a :class:`BadInputError` that names the file, the
frame count and what to do, unless the caller asks for one frame (``frame=k``). Reading its first frame instead
would have a 2-D model score one B-scan of the volume as if it were the whole input. A multi-frame object of one
frame (e.g. an enhanced single B-scan) is read as it is. Pixel Spacing of an enhanced object comes from its
functional groups (shared first, then the frame's own).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import optional_import

from medplugin.errors import BadInputError
from medplugin.io._frames import pixel_spacing_value

pydicom, _HAS_PYDICOM = optional_import("pydicom")
pixels, _HAS_PIXELS = optional_import("pydicom.pixels")
if _HAS_PYDICOM and not _HAS_PIXELS:  # pydicom 2 (MONAI Label's environment): the same functions, older home
    from medplugin.io import _pydicom2 as pixels
InvalidDicomError, _ = optional_import("pydicom.errors", name="InvalidDicomError")

__all__ = ["has_dicom_magic", "is_dicom", "read_dicom_image"]

logger = logging.getLogger(__name__)

_DICOM_SUFFIXES = (".dcm", ".dicom")

# SOP classes that carry Pixel Data which is not a picture to read as an image
_NON_IMAGE_PIXEL_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose Storage (a dose grid)",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage (a label map)",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage (a label map)",
    "1.2.840.10008.5.1.4.1.1.66.8": "Height Map Segmentation Storage (a label map)",
    "1.2.840.10008.5.1.4.1.1.30": "Parametric Map Storage (a parametric map)",
}
# "For Processing" radiographs hold raw detector values that a modality would still post-process
_FOR_PROCESSING_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray Image Storage - For Processing
}
# elements whose values could name or identify the patient (or their encounter): redacted from any message
# taken from a third-party exception
_IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "InstitutionName",
    "InstitutionAddress",
    "StudyDate",
    "StudyTime",
    "AcquisitionDateTime",
)
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")
_GRAY = ("MONOCHROME1", "MONOCHROME2")


def _require_pydicom() -> None:
    if not _HAS_PYDICOM:
        raise ImportError("reading DICOM needs pydicom: pip install 'pydicom>=3' (2.4 works too)")


def has_dicom_magic(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file with the DICOM preamble: ``DICM`` at byte 128 (PS3.10 section 7.1)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _looks_like_dataset(ds: Any) -> bool:
    """A dataset parsed with ``force=True`` is only taken for DICOM when it holds real image/SOP elements."""
    try:
        tags = list(ds.keys())
    except Exception:  # noqa: BLE001 - a garbage parse can fail anywhere
        return False
    groups = {t.group for t in tags}
    return bool(tags) and bool(groups & {0x0008, 0x0028, 0x7FE0})


def is_dicom(path: str | os.PathLike) -> bool:
    """Tell whether ``path`` is a DICOM file.

    A file is DICOM when it has the ``DICM`` marker at byte 128 (the DICOM file format), or when its name ends
    in ``.dcm``/``.dicom`` and pydicom can parse it as a bare dataset (older files without the preamble).
    Never raises for a missing or unreadable file: it returns ``False``.

    Args:
        path: the file to check.

    Returns:
        ``True`` for a DICOM file.
    """
    p = Path(path)
    if not p.is_file():
        return False
    if has_dicom_magic(p):
        return True
    if p.suffix.lower() not in _DICOM_SUFFIXES or not _HAS_PYDICOM:
        return False
    try:
        ds = pydicom.dcmread(p, force=True, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - any parse failure means "not DICOM"
        return False
    return _looks_like_dataset(ds)


def _redact(message: str, ds: Any) -> str:
    """Remove identifying element values of ``ds`` from ``message`` (a third-party exception's text)."""
    if ds is None:
        return message
    for kw in _IDENTIFYING_KEYWORDS:
        try:
            value = ds.get(kw)
        except Exception:  # noqa: BLE001
            continue
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for v in values:
            text = str(v).strip()
            if len(text) >= 2:
                message = message.replace(text, "<redacted>")
            # a person name also shows up component by component
            for part in text.replace("^", " ").split():
                if len(part) >= 3:
                    message = message.replace(part, "<redacted>")
    return message


def _uid_name(uid: Any) -> str | None:
    if uid is None:
        return None
    name = getattr(uid, "name", None)
    return str(name) if name else str(uid)


def _sop_class(ds: Any) -> Any:
    uid = ds.get("SOPClassUID")
    if uid is None and getattr(ds, "file_meta", None) is not None:
        uid = ds.file_meta.get("MediaStorageSOPClassUID")
    return uid


def _pixel_spacing(ds: Any, frame: int = 1) -> list[float] | None:
    """*Pixel Spacing* (top level, else the frame's functional groups), else *Imager Pixel Spacing*."""
    for value in (pixel_spacing_value(ds, frame), ds.get("ImagerPixelSpacing")):
        if value is None:
            continue
        try:
            spacing = [float(v) for v in (value if len(value) > 1 else [value[0], value[0]])]
        except (TypeError, ValueError, IndexError):
            continue
        if len(spacing) == 2 and all(np.isfinite(spacing)) and all(s > 0 for s in spacing):
            return spacing
    return None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _read_dataset(path: Path) -> Any:
    """Read the dataset (pixels included) or raise :class:`BadInputError` saying why it is not usable."""
    if not path.exists():
        raise BadInputError(path, "file not found")
    if not path.is_file():
        raise BadInputError(path, "not a file (a folder or a special file)")
    if path.stat().st_size == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    magic = has_dicom_magic(path)
    if not magic and path.suffix.lower() not in _DICOM_SUFFIXES:
        raise BadInputError(
            path, "not a DICOM file: no 'DICM' marker at byte 128 and the name does not end in .dcm or .dicom"
        )
    try:
        ds = pydicom.dcmread(path, force=not magic)
    except InvalidDicomError as e:
        raise BadInputError(path, f"not a DICOM file ({e})") from e
    except Exception as e:  # noqa: BLE001 - struct/EOF/value errors of a damaged file
        raise BadInputError(path, f"truncated or corrupt DICOM file ({type(e).__name__}: {e})") from e
    if not magic and not _looks_like_dataset(ds):
        raise BadInputError(path, "not a DICOM file: no 'DICM' marker and no DICOM image elements could be parsed")
    if len(ds) == 0:
        raise BadInputError(path, "truncated or corrupt DICOM file: no data elements after the file meta header")
    try:  # pydicom converts values lazily: convert them all now, so damage shows here, not mid-way
        for dataset in (getattr(ds, "file_meta", None), ds):
            for _ in dataset.iterall() if dataset is not None else ():
                pass
    except Exception as e:  # noqa: BLE001 - unknown VR, bad lengths, undecodable values, broken sequences
        raise BadInputError(path, f"corrupt DICOM data element ({_redact(f'{type(e).__name__}: {e}', ds)})") from e
    return ds


def _check_decodable(path: Path, ds: Any, ts: Any) -> None:
    """Raise a clear error when no installed plugin can decode the pixel data's transfer syntax."""
    if not ts.is_compressed:
        return
    try:
        decoder = pixels.get_decoder(ts)
    except NotImplementedError as e:
        raise BadInputError(
            path,
            f"pixel data in transfer syntax '{ts.name}' ({ts}) cannot be decoded: pydicom has no decoder for it",
        ) from e
    if not decoder.is_available:
        missing = "; ".join(str(m) for m in decoder.missing_dependencies) or "unknown"
        raise BadInputError(
            path,
            f"pixel data in transfer syntax '{ts.name}' ({ts}) cannot be decoded: no pixel data plugin for it is "
            f"installed (missing: {missing}); install e.g. pylibjpeg with pylibjpeg-libjpeg and "
            "pylibjpeg-openjpeg, or python-gdcm",
        )


def _window_output_range(ds: Any) -> tuple[float, float]:
    """The output range of pydicom's windowing for ``ds``: the values it gives far below and far above the window."""
    probe = np.array([-1e300, 1e300], dtype=np.float64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        out = pixels.apply_windowing(probe, ds, 0)
    return float(out[0]), float(out[1])


def _valid_voi_lut(ds: Any) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None


def _gray_to_display(path: Path, ds: Any, arr: np.ndarray, pi: str) -> tuple[np.ndarray, str]:
    """Modality LUT, VOI and 0..255 scaling of a grayscale frame; returns the image and the VOI rule used."""
    modality = np.asarray(pixels.apply_modality_lut(arr, ds))
    values = modality.astype(np.float64)
    lo = hi = None
    rule = "minmax"
    if _valid_voi_lut(ds):
        lut_input = modality
        if modality.dtype.kind == "f" and np.array_equal(modality, np.rint(modality)):
            lut_input = modality.astype(np.int64)  # a LUT is indexed by integers: keep them integers
        try:
            out = np.asarray(pixels.apply_voi(lut_input, ds, 0), dtype=np.float64)
            lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64).ravel()
            values, lo, hi, rule = out, float(lut.min()), float(lut.max()), "voi_lut"
        except Exception as e:  # noqa: BLE001 - a damaged LUT: fall back to the window or min-max
            logger.warning("%s: VOI LUT Sequence not usable (%s); ignoring it", path, type(e).__name__)
    if rule == "minmax" and ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            out = np.asarray(pixels.apply_windowing(values, ds, 0), dtype=np.float64)
            lo, hi = _window_output_range(ds)
            values, rule = out, "window"
        except Exception as e:  # noqa: BLE001 - e.g. a width < 1 or an unknown VOI LUT Function
            logger.warning(
                "%s: window (Window Center/Width) not usable (%s); scaling the image's min..max instead",
                path,
                _redact(str(e), ds),
            )
    if lo is None or hi is None:
        lo, hi = float(values.min()), float(values.max())
    if hi > lo:
        out = (values - lo) * (255.0 / (hi - lo))
        np.clip(out, 0.0, 255.0, out=out)
    else:
        out = np.zeros_like(values)
    if pi == "MONOCHROME1":
        out = 255.0 - out
    return out.astype(np.float32), rule


def _colour_to_display(ds: Any, arr: np.ndarray) -> np.ndarray:
    pi = ds.PhotometricInterpretation
    if pi == "PALETTE COLOR":
        arr = pixels.apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        bits = 8 if bits not in (8, 16) else bits
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
    full = float(2**bits - 1)
    out = np.asarray(arr, dtype=np.float64) * (255.0 / full)
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.float32)


def _multiframe_reason(ds: Any, frames: int, sop_name: str) -> str:
    """Why a multi-frame object is refused as one 2-D image, and what to do (OCT volumes in their own words)."""
    oct_volume = str(ds.get("Modality") or "").upper() == "OPT" or "Ophthalmic Tomography" in sop_name
    unit, per = ("B-scan", "image") if oct_volume else ("image", "file")
    return (f"a multi-frame image of {frames} frames ({sop_name}): a 2-D model takes one {unit} per {per}, not "
            f"{frames} (only the first would be scored); export the {unit}s as single-frame images (one file each)")


def read_dicom_image(path: str | os.PathLike, frame: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a DICOM radiograph (or any single-frame grayscale or colour DICOM image) for display.

    See the module docstring for the exact intensity rule: Modality LUT, then the VOI LUT or the first window
    (else the image's min..max), scaled to 0..255, MONOCHROME1 inverted so that higher is brighter.
    Compressed transfer syntaxes (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE) are decoded through
    the installed pydicom pixel-data plugins (pylibjpeg, pillow, gdcm, ...).

    Multi-frame objects: one of a single frame is read as it is; one of several frames is refused (see the
    module docstring) unless ``frame`` names the frame to read.

    Args:
        path: the DICOM file.
        frame: the frame to read, counted from 1 as DICOM counts them; ``None`` (default): the file must hold one
            image (one frame).

    Returns:
        ``(image, meta)``: ``image`` a float32 array in 0..255, (H, W) for MONOCHROME1/2, (H, W, 3) for colour;
        ``meta`` a dict with only non-identifying fields: ``modality``, ``photometric_interpretation``,
        ``rows``, ``columns``, ``pixel_spacing`` (``[row, column]`` mm from *Pixel Spacing*, else *Imager
        Pixel Spacing*, else ``None``), ``transfer_syntax`` (its name), ``sop_class`` (its name), ``bits_stored``,
        ``frames`` (frames in the file) and ``voi`` (``"window"``, ``"voi_lut"``, ``"minmax"`` or ``None`` for
        colour). ``pixel_spacing`` is the read frame's (an enhanced object keeps it in its functional groups).

    Raises:
        BadInputError: naming the file when it is missing, empty, not DICOM, truncated or corrupt, holds no
            Pixel Data, holds a non-image object (RT dose, segmentation, parametric map), has pixel data no
            installed plugin can decode (the message names the transfer syntax and what is missing), has
            dimensions other than (rows, columns[, 3]), or holds several frames and no ``frame`` was given (the
            message names the frame count and what to do).
        ValueError: ``frame`` is not a frame of the file.
        ImportError: when pydicom is not installed.
    """
    _require_pydicom()
    path = Path(path)
    ds = _read_dataset(path)

    sop = _sop_class(ds)
    sop_name = _uid_name(sop) or "unknown"
    if "PixelData" not in ds:
        hint = ""
        if "Rows" in ds or "Image Storage" in sop_name:
            hint = "; the SOP class is an image, so the file may be truncated"
        raise BadInputError(path, f"no pixel data: this DICOM holds no image (SOP class {sop_name}){hint}")
    if sop is not None and str(sop) in _NON_IMAGE_PIXEL_SOP_CLASSES:
        raise BadInputError(
            path,
            f"not an image: SOP class {_NON_IMAGE_PIXEL_SOP_CLASSES[str(sop)]} holds pixel data that is not a "
            "picture to read as an image",
        )
    if sop is not None and str(sop) in _FOR_PROCESSING_SOP_CLASSES:
        logger.warning(
            "%s: a 'For Processing' radiograph (%s): raw detector values, not the processed image a viewer shows",
            path,
            sop_name,
        )

    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if ts is None:
        # a bare dataset (no file meta): take the encoding pydicom found while reading it
        implicit, little = getattr(ds, "original_encoding", (None, None))
        if implicit is None:
            raise BadInputError(path, "no Transfer Syntax UID in the file meta information: cannot decode pixels")
        ts = pydicom.uid.ImplicitVRLittleEndian if implicit else (
            pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
        )
        ds.file_meta = file_meta if file_meta is not None else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
    ts = pydicom.uid.UID(str(ts))
    if not ts.is_transfer_syntax:
        raise BadInputError(path, f"unknown Transfer Syntax UID {str(ts)!r} in the file meta: damaged file?")
    ts_name = _uid_name(ts)

    pi = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    rows, cols = _int_or_none(ds.get("Rows")), _int_or_none(ds.get("Columns"))
    spp = _int_or_none(ds.get("SamplesPerPixel", 1)) or 1
    frames = _int_or_none(ds.get("NumberOfFrames", 1)) or 1
    if not rows or not cols or rows < 1 or cols < 1:
        raise BadInputError(path, f"unexpected dimensions: Rows {rows}, Columns {cols} (both must be positive)")
    if pi not in _GRAY + _COLOUR:
        raise BadInputError(
            path, f"unsupported Photometric Interpretation {pi!r}: expected one of {', '.join(_GRAY + _COLOUR)}"
        )
    expected_spp = 1 if pi in _GRAY or pi == "PALETTE COLOR" else 3
    if spp != expected_spp:
        raise BadInputError(
            path, f"unexpected dimensions: Samples per Pixel {spp} for Photometric Interpretation {pi} "
            f"(expected {expected_spp})"
        )

    _check_decodable(path, ds, ts)
    if frame is None and frames > 1:
        raise BadInputError(path, _multiframe_reason(ds, frames, sop_name))
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, (int, np.integer))
                              or not 1 <= frame <= frames):
        raise ValueError(f"frame must be a frame number from 1 to {frames} for {path}, got {frame!r}.")
    frame = int(frame or 1)
    try:
        arr = pixels.pixel_array(ds, index=frame - 1) if frames > 1 else pixels.pixel_array(ds)
    except Exception as e:  # noqa: BLE001 - decoders raise many types for damaged data
        reason = _redact(f"{type(e).__name__}: {e}", ds)
        raise BadInputError(
            path, f"cannot decode the pixel data (transfer syntax '{ts_name}'): truncated or corrupt? {reason}"
        ) from e

    arr = np.asarray(arr)
    expected = (rows, cols) if expected_spp == 1 else (rows, cols, 3)
    if arr.shape != expected:
        raise BadInputError(path, f"unexpected dimensions: decoded shape {arr.shape}, expected {expected}")

    if pi in _GRAY:
        image, voi = _gray_to_display(path, ds, arr, pi)
    else:
        image, voi = _colour_to_display(ds, arr), None

    meta = {
        "modality": str(ds.get("Modality")) if ds.get("Modality") else None,
        "photometric_interpretation": pi,
        "rows": rows,
        "columns": cols,
        "pixel_spacing": _pixel_spacing(ds, frame),
        "transfer_syntax": ts_name,
        "sop_class": _uid_name(sop),
        "bits_stored": _int_or_none(ds.get("BitsStored")),
        "frames": frames,
        "voi": voi,
    }
    return image, meta
