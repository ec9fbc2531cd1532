"""A segmentation mask as a binary DICOM SEG on its source image or series.

Mask orientation contract
-------------------------
- **One image** (a radiograph): ``mask`` is ``(Rows, Columns)``, row ``r`` and column ``c`` being the source's
  stored pixel ``(r, c)`` (as ``pydicom``'s ``pixel_array`` and :func:`medplugin.io.read_dicom_image` give it; a
  MONAI reader's ``(W, H)`` spatial layout must be transposed: ``mask.T``).
- **A series** (a knee MR): ``mask`` is ``(slices, Rows, Columns)`` with the slices in *series order*, ascending
  position along the slice normal ``row_cosines x column_cosines`` (:func:`read_series`; file names, file order
  and Instance Numbers do not matter), rows and columns as stored. A mask on any other layout of the same voxel
  grid (MONAI's ``(x, y, z)``, medplugin's sagittal slice-first volumes, flipped axes) is accepted together with
  its ``mask_affine`` (4x4, voxel index to RAS mm, as MONAI's ``MetaTensor.affine`` and nibabel): it is then
  transposed and flipped onto the series grid exactly (no interpolation); a grid that is not the series' own
  (resampled, cropped) is refused with the reason.
- Values: ``0`` background, ``k`` = ``segments[k - 1]`` (a label map); a boolean mask is segment 1.

Every source slice gets one frame per segment (empty frames are kept), each frame referencing its source
instance (Derivation Image Sequence), so the SEG re-assembles to the mask slice for slice. A source without a
Frame of Reference (most CR/DX radiographs) gives a SEG without one, aligned pixel for pixel with the image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medplugin.errors import BadInputError
from medplugin.io.dicom_results._common import (
    PRIVATE_SCHEME,
    ModelInfo,
    Source,
    coding_schemes,
    read_series,
    read_source,
    require_highdicom,
    save_result,
    series_affine,
    source_name,
)

__all__ = ["SegmentSpec", "LUNGS", "ACL_REGION", "to_series_grid", "write_segmentation", "read_segmentation_mask"]

logger = logging.getLogger(__name__)

_ANATOMICAL_STRUCTURE = ("91723000", "SCT", "Anatomical Structure")  # CID 7150
_AI_FAMILY = ("123110", "DCM", "Artificial Intelligence")


@dataclass(frozen=True)
class SegmentSpec:
    """What one segment is, in codes (``[value, scheme, meaning]``).

    Args:
        label: the Segment Label shown by viewers.
        property_type: Segmented Property Type (e.g. SCT 39607008 Lung).
        property_category: Segmented Property Category (CID 7150; Anatomical Structure by default).
        anatomic_region: optional Anatomic Region.
    """

    label: str
    property_type: tuple[str, str, str]
    property_category: tuple[str, str, str] = _ANATOMICAL_STRUCTURE
    anatomic_region: tuple[str, str, str] | None = None

    @classmethod
    def from_config(cls, spec: Any) -> SegmentSpec:
        """From a config mapping ``{label, property_type: [v, s, m], property_category?, anatomic_region?}``."""
        if isinstance(spec, SegmentSpec):
            return spec
        if not isinstance(spec, dict) or "label" not in spec or "property_type" not in spec:
            raise ValueError(f"a segment must be a mapping with 'label' and 'property_type', got {spec!r}.")
        kw = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in spec.items()}
        return cls(**kw)


LUNGS = SegmentSpec("Lungs", ("39607008", "SCT", "Lung"))
"""Both lungs (the lung bundle's label 1)."""
# no SNOMED CT concept names "the ACL region" (the band and any tear gap): a private code, in the knee joint
ACL_REGION = SegmentSpec("ACL region", ("ACL_REGION", PRIVATE_SCHEME, "Anterior cruciate ligament region"),
                         anatomic_region=("49076000", "SCT", "Knee joint"))
"""The knee segmentation bundle's label 1."""


def to_series_grid(mask: np.ndarray, mask_affine: np.ndarray, headers: Sequence[Dataset]) -> np.ndarray:
    """Put a 3-D mask given on some layout of a series' voxel grid into series order ``(slices, rows, columns)``.

    Args:
        mask: the 3-D mask (any axis order or direction of the series' own grid).
        mask_affine: its 4x4 voxel-to-RAS matrix.
        headers: the series, sorted (:func:`read_series`).

    Returns:
        the mask transposed and flipped onto the series grid (a view-free copy).

    Raises:
        ValueError: the mask's grid is not the series' grid (another spacing, origin or size: resampled or
            cropped), with both grids in the message.
    """
    mask = np.asarray(mask)
    affine = np.asarray(mask_affine, dtype=np.float64)
    if mask.ndim != 3 or affine.shape != (4, 4):
        raise ValueError(f"expected a 3-D mask and a 4x4 affine, got shapes {mask.shape} and {affine.shape}.")
    target = series_affine(headers)
    shape = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    m = np.linalg.inv(affine) @ target  # series index -> mask index
    rot, offset = m[:3, :3], m[:3, 3]
    perm = np.argmax(np.abs(rot), axis=0)  # mask axis feeding each series axis
    signs = np.sign(rot[perm, [0, 1, 2]])
    grid_ok = (
        sorted(perm.tolist()) == [0, 1, 2]
        and np.allclose(rot, _signed(perm, signs), atol=1e-3)
        and np.allclose(offset, np.round(offset), atol=1e-2)
    )
    if grid_ok:
        out = mask.transpose(perm)
        for axis in range(3):
            if signs[axis] < 0:
                out = np.flip(out, axis)
        start = np.round(offset).astype(int)
        expected_start = np.array([0 if signs[a] > 0 else mask.shape[perm[a]] - 1 for a in range(3)])
        grid_ok = out.shape == shape and np.array_equal(start[perm], expected_start)
    if not grid_ok:
        raise ValueError(
            f"the mask (shape {mask.shape}, affine {np.round(affine, 4).tolist()}) is not on the series' voxel grid "
            f"(shape {shape}, affine {np.round(target, 4).tolist()}): resample it onto the source series first."
        )
    return np.ascontiguousarray(out)


def _signed(perm: np.ndarray, signs: np.ndarray) -> np.ndarray:
    out = np.zeros((3, 3))
    for series_axis, mask_axis in enumerate(perm):
        out[mask_axis, series_axis] = signs[series_axis]
    return out


def _one_hot(labels: np.ndarray, n_segments: int, name: str) -> np.ndarray:
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError(f"{name}: the mask must hold integer labels 0..{n_segments}, got non-integer values.")
        labels = labels.astype(np.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > n_segments:
        raise ValueError(f"{name}: mask labels must be in 0..{n_segments} (one per segment), got {lo}..{hi}.")
    return np.stack([labels == k for k in range(1, n_segments + 1)], axis=-1)


def _valid_spacing(header: Dataset, name: str) -> None:
    value = header.get("PixelSpacing")
    if value is None:
        return
    try:
        ok = len(value) == 2 and min(float(v) for v in value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        logger.warning("%s: Pixel Spacing %s is not valid; the SEG carries no pixel measures", name, list(value))
        del header.PixelSpacing


def write_segmentation(
    source: Source | Sequence[Source],
    mask: np.ndarray,
    segments: Sequence[SegmentSpec | dict],
    model: ModelInfo,
    output_dir: str | os.PathLike,
    mask_affine: np.ndarray | None = None,
    series_number: int = 9903,
) -> Path:
    """Write a binary DICOM SEG of ``mask`` on its source image (2-D) or series (3-D, multi-frame).

    Args:
        source: one image, or the files of one series (any order).
        mask: see the module's orientation contract.
        segments: one :class:`SegmentSpec` (or config mapping) per label 1, 2, ...
        model: the bundle's name and version (Segment Algorithm Identification, equipment).
        output_dir: the folder; the file is ``<SOP Instance UID>.dcm``.
        mask_affine: for a series, the mask's voxel-to-RAS affine when it is not in series order.
        series_number: the SEG series' number.

    Returns:
        the written file.

    Raises:
        BadInputError: an unreadable source, one without identifiers or, for a series, without a Frame of
            Reference and geometry, or a series mixing series/orientations (naming the file).
        ValueError: a mask whose shape, grid or labels do not fit the source (both shapes in the message).
    """
    hd = require_highdicom()
    segments = [SegmentSpec.from_config(s) for s in segments]
    if not segments:
        raise ValueError("write_segmentation needs at least one segment description.")
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    mask = np.asarray(mask)
    name = source_name(sources[0])
    if len(sources) == 1 and mask.ndim == 2:
        headers = [read_source(sources[0])]
        expected = (int(headers[0].Rows), int(headers[0].Columns))
        if mask.shape != expected:
            hint = " (transposed? a MONAI reader gives (W, H): pass mask.T)" if mask.shape == expected[::-1] else ""
            raise ValueError(f"{name}: mask shape {mask.shape} is not the image's (Rows, Columns) {expected}{hint}.")
        frames = mask[None]
    else:
        if mask.ndim != 3:
            raise ValueError(f"{name}: a series needs a 3-D mask (slices, rows, columns), got shape {mask.shape}.")
        headers = read_series(sources)
        frames = to_series_grid(mask, mask_affine, headers) if mask_affine is not None else mask
        expected3 = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
        if frames.shape != expected3:
            raise ValueError(f"{name}: mask shape {frames.shape} is not the series' (slices, Rows, Columns) "
                             f"{expected3}; give mask_affine when the mask is in another layout.")
    for header, src in zip(headers, sources):
        _valid_spacing(header, source_name(src))
    pixel_array = _one_hot(frames, len(segments), name)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=spec.label[:64],
            segmented_property_category=hd.sr.CodedConcept(*spec.property_category),
            segmented_property_type=hd.sr.CodedConcept(*spec.property_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=model.name[:64], family=hd.sr.CodedConcept(*_AI_FAMILY), version=model.version[:64]),
            anatomic_regions=[hd.sr.CodedConcept(*spec.anatomic_region)] if spec.anatomic_region else None,
        )
        for i, spec in enumerate(segments, start=1)
    ]
    private = any(PRIVATE_SCHEME in (s.property_type[1], s.property_category[1]) for s in segments)
    try:
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=model.manufacturer,
            manufacturer_model_name=model.name[:64],
            software_versions=model.software_versions,
            device_serial_number=model.device_serial_number,
            omit_empty_frames=False,
            series_description=model.description("Segmentation"),
            content_description=f"{', '.join(s.label for s in segments)} by {model.name}"[:64],
            coding_schemes=coding_schemes() if private else None,
        )
    except (ValueError, AttributeError, TypeError) as e:  # what highdicom says about a source it cannot use
        raise BadInputError(name, f"cannot make a DICOM SEG on this source: {e}") from e
    if "FrameOfReferenceUID" not in headers[0]:
        # a projection radiograph: General Image's Patient Orientation (Type 2C) tells how the pixels lie
        orientation = headers[0].get("PatientOrientation")
        seg.PatientOrientation = list(orientation) if orientation is not None and len(orientation) == 2 else None
    path = save_result(seg, output_dir, headers[0])
    logger.info("wrote SEG %s: %d frame(s), %d segment(s)", path.name, int(seg.NumberOfFrames), len(segments))
    return path


def read_segmentation_mask(path: str | os.PathLike, source: Source | Sequence[Source]) -> np.ndarray:
    """Re-assemble a binary SEG's frames into a label map on its source, in the orientation contract's layout.

    Reads the frames with pydicom alone (independent of highdicom): each frame is put at the slice of the source
    instance its Derivation Image Sequence references, with its Referenced Segment Number as the label.

    Args:
        path: the SEG file.
        source: the image or series it was made on.

    Returns:
        ``(Rows, Columns)`` for one image, ``(slices, Rows, Columns)`` in series order for a series (uint8).

    Raises:
        BadInputError: not a binary SEG, or a frame referencing an image that is not among the sources.
    """
    import pydicom

    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    headers = read_series(sources) if len(sources) > 1 else [read_source(sources[0])]
    index = {str(h.SOPInstanceUID): i for i, h in enumerate(headers)}
    seg = pydicom.dcmread(path)
    if str(seg.SOPClassUID) != "1.2.840.10008.5.1.4.1.1.66.4" or seg.get("SegmentationType") != "BINARY":
        raise BadInputError(path, "not a binary DICOM Segmentation")
    rows, cols, n = int(seg.Rows), int(seg.Columns), int(seg.NumberOfFrames)
    bits = np.unpackbits(np.frombuffer(seg.PixelData, dtype=np.uint8), bitorder="little")[: n * rows * cols]
    frames = bits.reshape(n, rows, cols)
    out = np.zeros((len(headers), rows, cols), dtype=np.uint8)
    shared = seg.SharedFunctionalGroupsSequence[0]
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        # a macro shared by all frames (one segment, one source image) sits in the shared functional groups
        derivation = item.get("DerivationImageSequence") or shared.get("DerivationImageSequence")
        identification = item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        if not derivation or not identification:
            raise BadInputError(path, f"frame {i + 1} names no source image or no segment")
        uid = str(derivation[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        if uid not in index:
            raise BadInputError(path, f"frame {i + 1} references image {uid}, which is not among the sources")
        label = int(identification[0].ReferencedSegmentNumber)
        out[index[uid]][frames[i].astype(bool)] = label
    return out[0] if len(sources) == 1 else out
