"""A classification result as a DICOM Structured Report: TID 1500 Measurement Report in a Comprehensive SR.

Why TID 1500 in a Comprehensive SR (not a free-form Comprehensive SR, not Comprehensive 3D SR): TID 1500 is the
template DICOM and IHE AI Results use for image-derived findings, OHIF's SR viewport and 3D Slicer's
QuantitativeReporting read it, and highdicom builds and parses it (so do dcmqi and dcmtk's dsr2html); the
Comprehensive SR SOP Class (1.2.840.10008.5.1.4.1.1.88.33) is accepted by every PACS that stores SR, whereas the
3D variant is younger and not needed (no 3D coordinates here).

Content, per source image (``n`` counts the images of the study):

- one measurement group (TID 1501) "input gate": qualitative evaluation *In scope* (private concept
  ``99MEDPLUGIN IN_SCOPE``) = SCT Yes/No; when out of scope, a TEXT item DCM 121106 *Comment* with the reason
  (TID 1501 is an extensible template); the out-of-distribution score and its threshold when given;
- unless the gate refused the image, one group per class: Finding = the class concept, measurement DCM 122157
  *Probability* (UCUM ``1``), DCM 122411 *Threshold Value* of the operating point when the model has one, and the
  call as a qualitative evaluation *<class>* = SCT Present/Absent (no call for a class without an operating point
  when the caller says so); a DCM 121106 *Comment* when the probability is uncalibrated or no call was made;
- every group references its source image (SOP Class and Instance UID) and names the algorithm (bundle name and
  version; operating point criterion, sensitivity and specificity and the temperature as parameters).

Class concepts are private codes (``99MEDPLUGIN``; the class name as Code Meaning and, up to 16 characters, as Code
Value: longer names get a stable shortened value) unless ``finding_codes`` maps a class to a standard code, e.g.
``{"Effusion": ["60046008", "SCT", "Pleural effusion"]}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medplugin.errors import BadInputError
from medplugin.io.dicom_results._common import (
    ModelInfo,
    Source,
    coding_schemes,
    private_code,
    read_source,
    require_highdicom,
    save_result,
    source_name,
)

__all__ = ["ImageClassification", "calls_at_operating_points", "write_classification_sr", "read_classification_sr"]

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
# concept codes, spelled out (pydicom 2 and 3 code dictionaries disagree on some SNOMED values)
_PROBABILITY = ("122157", "DCM", "Probability")
_THRESHOLD = ("122411", "DCM", "Threshold Value")
_COMMENT = ("121106", "DCM", "Comment")
_PRESENT = ("52101004", "SCT", "Present")
_ABSENT = ("272519000", "SCT", "Absent")
_YES = ("373066001", "SCT", "Yes")
_NO = ("373067005", "SCT", "No")
_NO_UNITS = ("1", "UCUM", "no units")
_IMAGING_PROCEDURE = ("363679005", "SCT", "Imaging procedure")
_DEVICE = ("121007", "DCM", "Device")
_AI = ("123110", "DCM", "Artificial Intelligence")
IN_SCOPE = ("IN_SCOPE", "Input within the model's intended use")
OOD_SCORE = ("OOD_SCORE", "Out-of-distribution score")
INPUT_GATE = ("INPUT_GATE", "Input gate")
UNCALIBRATED = "uncalibrated probability: the model records no temperature scaling"
NO_CALL = "no call: the model records no operating point for this class"


def _code(triple: Sequence[str]) -> Any:
    hd = require_highdicom()
    value, scheme, meaning = triple
    return hd.sr.CodedConcept(value=str(value), scheme_designator=str(scheme), meaning=str(meaning)[:64])


@dataclass
class ImageClassification:
    """One source image's classification result, as the SR records it.

    Args:
        source: the image (DICOM path or dataset), or the images of one series (e.g. a knee MR classified as a
            volume): every group then references all of them.
        probabilities: ``{class: calibrated probability}``; ``None`` when the input gate refused the image.
        calls: ``{class: called positive}``, a class mapped to ``None`` getting no call (the model has no
            operating point for it: the SR then records its probability only, and says why); ``None`` computes
            every call with :func:`calls_at_operating_points`.
        in_scope: the input gate's verdict.
        out_of_scope_reason: why it is out of scope (empty when in scope).
        ood_score: the out-of-distribution score, if computed.
        ood_threshold: the score's threshold.
    """

    source: Source | Sequence[Source]
    probabilities: Mapping[str, float] | None
    calls: Mapping[str, bool | None] | None = None
    in_scope: bool = True
    out_of_scope_reason: str = ""
    ood_score: float | None = None
    ood_threshold: float | None = None


def calls_at_operating_points(
    probabilities: Mapping[str, float], model: ModelInfo, multilabel: bool = True
) -> dict[str, bool]:
    """Turn probabilities into calls at the model's operating points.

    Args:
        probabilities: ``{class: probability}``.
        model: its ``operating_points`` give per-class thresholds.
        multilabel: each class on its own (``p >= threshold``, 0.5 without an operating point); ``False`` for a
            multi-class (softmax) model: the most probable class is the positive one, unless classes have
            operating points, which then decide for those classes as in the multi-label case.

    Returns:
        ``{class: bool}`` in the order of ``probabilities``.
    """
    calls: dict[str, bool] = {}
    best = max(probabilities, key=lambda c: probabilities[c]) if probabilities else None
    for cls, p in probabilities.items():
        point = model.operating_points.get(cls)
        if point is not None:
            calls[cls] = float(p) >= float(point["threshold"])
        elif multilabel:
            calls[cls] = float(p) >= DEFAULT_THRESHOLD
        else:
            calls[cls] = cls == best
    return calls


def _algorithm(model: ModelInfo, cls: str | None) -> Any:
    hd = require_highdicom()
    params = []
    point = model.operating_points.get(cls) if cls is not None else None
    for key in ("criterion", "sensitivity", "specificity"):
        if point is not None and point.get(key) is not None:
            params.append(f"operating point {key}={point[key]}")
    temperature = model.temperature_of(cls)
    if temperature is not None:
        params.append(f"temperature={temperature:.6g}")
    elif model.temperature is None:
        params.append("uncalibrated")
    return hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version[:64], parameters=params or None)


def _measurement(name: Any, value: float, model: ModelInfo, cls: str | None) -> Any:
    hd = require_highdicom()
    return hd.sr.Measurement(name=name, value=float(value), unit=_code(_NO_UNITS), algorithm_id=_algorithm(model, cls))


def _sources(headers: Sequence[Dataset]) -> list:
    hd = require_highdicom()
    return [hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in headers]


def _gate_group(image: ImageClassification, headers: Sequence[Dataset], model: ModelInfo, label: str) -> Any:
    hd = require_highdicom()
    measurements = []
    if image.ood_score is not None:
        measurements.append(_measurement(private_code(*OOD_SCORE), image.ood_score, model, None))
        if image.ood_threshold is not None:
            measurements.append(_measurement(_code(_THRESHOLD), image.ood_threshold, model, None))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{label}input gate"[:64]),
        finding_type=private_code(*INPUT_GATE),
        algorithm_id=_algorithm(model, None),
        source_images=_sources(headers),
        measurements=measurements or None,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=private_code(*IN_SCOPE), value=_code(_YES if image.in_scope else _NO))
        ],
    )
    if not image.in_scope and image.out_of_scope_reason:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=_code(_COMMENT), value=str(image.out_of_scope_reason)[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ))
    return group


def _class_group(cls: str, p: float, call: bool | None, headers: Sequence[Dataset], model: ModelInfo, concept: Any,
                 label: str) -> Any:
    hd = require_highdicom()
    measurements = [_measurement(_code(_PROBABILITY), p, model, cls)]
    point = model.operating_points.get(cls)
    if point is not None:
        measurements.append(_measurement(_code(_THRESHOLD), float(point["threshold"]), model, cls))
    evaluations = None if call is None else [
        hd.sr.QualitativeEvaluation(name=concept, value=_code(_PRESENT if call else _ABSENT))]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{label}{cls}"[:64]),
        finding_type=concept,
        algorithm_id=_algorithm(model, cls),
        source_images=_sources(headers),
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    notes = []
    if model.temperature_of(cls) is None:
        notes.append(UNCALIBRATED)
    if call is None:
        notes.append(NO_CALL)
    if notes:  # TID 1501 is extensible: a Comment says what the numbers are not
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=_code(_COMMENT), value="; ".join(notes), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def _class_concept(cls: str, finding_codes: Mapping[str, Sequence[str]] | None) -> Any:
    if finding_codes and cls in finding_codes:
        triple = finding_codes[cls]
        if len(triple) != 3:
            raise ValueError(f"finding_codes[{cls!r}] must be [value, scheme, meaning], got {triple!r}.")
        return _code(triple)
    return private_code(cls, cls)


def write_classification_sr(
    images: Sequence[ImageClassification],
    model: ModelInfo,
    output_dir: str | os.PathLike,
    multilabel: bool = True,
    finding_codes: Mapping[str, Sequence[str]] | None = None,
    series_number: int = 9901,
    procedure_code: Sequence[str] = _IMAGING_PROCEDURE,
) -> Path:
    """Write one Structured Report for the classification of the images of one study.

    Args:
        images: the study's images and their results (one or more; all of one study).
        model: the bundle's name, version, operating points and temperature.
        output_dir: the folder; the file is ``<SOP Instance UID>.dcm``.
        multilabel: how calls are made when an image has no ``calls`` (see :func:`calls_at_operating_points`).
        finding_codes: standard codes for classes, ``{class: [value, scheme, meaning]}``.
        series_number: the SR series' number.
        procedure_code: the procedure reported, ``[value, scheme, meaning]``.

    Returns:
        the written file.

    Raises:
        BadInputError: a source that cannot be read or lacks an identifier, or images of different studies
            (naming the first file of another study).
        ValueError: an empty ``images`` or a probability outside [0, 1] (naming the class and the value).
    """
    hd = require_highdicom()
    if not images:
        raise ValueError("write_classification_sr needs at least one image.")
    sources = [list(im.source) if isinstance(im.source, (list, tuple)) else [im.source] for im in images]
    headers = [[read_source(s, image=False) for s in group] for group in sources]
    if not all(headers):
        raise ValueError("every ImageClassification needs a source image (or a non-empty series).")
    study = headers[0][0].StudyInstanceUID
    for group, group_headers in zip(sources, headers):
        for s, header in zip(group, group_headers):
            if header.StudyInstanceUID != study:
                raise BadInputError(source_name(s), f"belongs to another study than {source_name(sources[0][0])}: "
                                    "one SR is written per study")
    groups = []
    for n, (im, image_headers) in enumerate(zip(images, headers), start=1):
        label = f"image {n}: " if len(images) > 1 else ""
        groups.append(_gate_group(im, image_headers, model, label))
        if im.probabilities is None:
            continue
        for cls, p in im.probabilities.items():
            if not (np.isfinite(float(p)) and 0.0 <= float(p) <= 1.0):
                raise ValueError(f"probability of {cls!r} must be in [0, 1], got {p!r} "
                                 f"({source_name(sources[n - 1][0])}).")
        calls = dict(im.calls) if im.calls is not None else calls_at_operating_points(im.probabilities, model,
                                                                                       multilabel)
        for cls, p in im.probabilities.items():
            call = calls.get(cls, False)  # None: no call (no operating point)
            groups.append(_class_group(cls, float(p), None if call is None else bool(call), image_headers, model,
                                       _class_concept(cls, finding_codes), label))
    observer = hd.sr.ObserverContext(
        observer_type=_code(_DEVICE),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[model.manufacturer, model.name, model.version]),
            name=model.name[:64], manufacturer_name=model.manufacturer[:64], model_name=model.name[:64],
            serial_number=model.device_serial_number,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_code(procedure_code),
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[h for group in headers for h in group],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=model.manufacturer,
        is_complete=True,
        is_final=False,  # a machine's result, not signed off by a reader
        is_verified=False,
        series_description=model.description("AI findings"),
        coding_schemes=coding_schemes(),
    )
    path = save_result(sr, output_dir, headers[0][0])
    logger.info("wrote SR %s: %d image(s), %d measurement group(s)", path.name, len(images), len(groups))
    return path


# --- reading our SR back (plain pydicom: independent of the highdicom version) ------------------------------


def _meaning(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _code_value(code: Dataset) -> str:
    return str(code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue"))


def read_classification_sr(path: str | os.PathLike) -> list[dict]:
    """Read a Structured Report written by :func:`write_classification_sr` back into plain values.

    Args:
        path: the SR file.

    Returns:
        one dict per image (or series) in the order written: ``{"sop_instance_uid", "sop_class_uid",
        "sop_instance_uids" (all images referenced), "in_scope", "out_of_scope_reason", "ood_score",
        "findings": {class: {"probability", "threshold", "call"}}, "notes": {class: comment}}``
        (``threshold`` ``None`` without an operating point, ``call`` ``None`` when no call was made, ``notes``
        what the SR says of an uncalibrated probability or a missing call; ``findings`` empty when the gate
        refused the image).
    """
    import pydicom

    ds = pydicom.dcmread(path)
    images: dict[str, dict] = {}
    containers = [i for i in ds.ContentSequence if i.ValueType == "CONTAINER" and _meaning(i) == "Imaging Measurements"]
    for container in containers:
        for group in container.ContentSequence:
            refs, finding = [], None
            values: dict[str, Any] = {}
            for item in group.get("ContentSequence", []):
                name = _meaning(item)
                if item.ValueType == "IMAGE":
                    refs.append(item.ReferencedSOPSequence[0])
                elif name == "Finding":
                    finding = item.ConceptCodeSequence[0]
                elif item.ValueType == "NUM":
                    values[name] = float(item.MeasuredValueSequence[0].NumericValue)
                elif item.ValueType == "CODE":
                    values[name] = item.ConceptCodeSequence[0].CodeMeaning
                elif item.ValueType == "TEXT" and name == "Comment":
                    values["Comment"] = str(item.TextValue)
            if not refs or finding is None:
                continue
            entry = images.setdefault(str(refs[0].ReferencedSOPInstanceUID), {
                "sop_instance_uid": str(refs[0].ReferencedSOPInstanceUID),
                "sop_class_uid": str(refs[0].ReferencedSOPClassUID),
                "sop_instance_uids": [str(r.ReferencedSOPInstanceUID) for r in refs],
                "in_scope": None, "out_of_scope_reason": "", "ood_score": None, "findings": {}, "notes": {},
            })
            if _code_value(finding) == INPUT_GATE[0]:
                entry["in_scope"] = values.get(IN_SCOPE[1]) == "Yes"
                entry["out_of_scope_reason"] = values.get("Comment", "")
                entry["ood_score"] = values.get(OOD_SCORE[1])
            else:
                evaluation = values.get(str(finding.CodeMeaning))
                entry["findings"][str(finding.CodeMeaning)] = {
                    "probability": values.get("Probability"),
                    "threshold": values.get("Threshold Value"),
                    "call": None if evaluation is None else evaluation == "Present",
                }
                if values.get("Comment"):
                    entry["notes"][str(finding.CodeMeaning)] = values["Comment"]
    return list(images.values())
