"""DICOM results of batch inference, for DICOM inputs: an SR per study and Grad-CAM Secondary Captures
(classification, :class:`DicomResultWriter`), a SEG per input (segmentation, :class:`DicomSegmentationWriter`).

Both write with :mod:`medplugin.io.dicom_results` (highdicom) into ``dicom_output_dir`` (files named by their
new SOP Instance UID) and list what they wrote in ``<output_dir>/dicom_outputs.csv`` (``file``, ``object``,
``dicom_file``, ``error``): a source that cannot carry a result (e.g. no Study Instance UID) gets its error row
there and the others go on. ``dicom_output``: ``auto`` (default) writes results for DICOM inputs and passes
others by, ``true`` also gives each non-DICOM input an error row, ``false`` writes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from medplugin.errors import BadInputError
from medplugin.handlers._engine import Collector, iter_samples
from medplugin.handlers.gate import read_model_json
from medplugin.handlers.segmentation import SegmentationWriter, _dataset_transform
from medplugin.utils import atomic_write

__all__ = ["DicomResultWriter", "DicomSegmentationWriter", "bundle_model_info", "dicom_output_mode",
           "dicom_sources"]

logger = logging.getLogger(__name__)

CSV_NAME = "dicom_outputs.csv"
_FIELDS = ("file", "object", "dicom_file", "error")


def dicom_output_mode(value: Any) -> bool | str:
    """``dicom_output`` as a config gives it: ``"auto"``, ``True`` or ``False`` (also ``"true"``/``"false"``).

    Raises:
        ValueError: another value, named.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return "auto" if text == "auto" else text == "true"
    raise ValueError(f"dicom_output must be auto, true or false, got {value!r}.")


def _is_dicom_file(path: Path) -> bool:
    from medplugin.io.dicom import has_dicom_magic
    from medplugin.io.image2d import DICOM_SUFFIXES

    return path.is_file() and (path.suffix.lower() in DICOM_SUFFIXES or has_dicom_magic(path))


def dicom_sources(path: str | os.PathLike) -> list[str] | None:
    """The DICOM file(s) of an inference input: ``[path]`` for a DICOM file, the DICOM files of a series folder
    (sorted by name; :func:`medplugin.io.dicom_results.read_series` orders them by position), ``None`` otherwise."""
    p = Path(path)
    if p.is_dir():
        files = [str(f) for f in sorted(p.iterdir()) if _is_dicom_file(f)]
        return files or None
    return [str(p)] if str(path) and _is_dicom_file(p) else None


def bundle_model_info(bundle_root: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None,
                      class_names: Sequence[str] | None = None):
    """The bundle as the DICOM results name it: its folder name, the version of ``configs/metadata.json``, and the
    temperature and operating points ``ckpt_dir/model.json`` records (none there: uncalibrated, no calls)."""
    from medplugin.io.dicom_results import ModelInfo

    root = Path(bundle_root).resolve()
    meta_file = root / "configs" / "metadata.json"
    version = json.loads(meta_file.read_text()).get("version") if meta_file.is_file() else None
    return ModelInfo.from_model_json(root.name, str(version or "unversioned"), read_model_json(ckpt_dir),
                                     class_names=class_names)


class _Rows:
    """The rows of ``dicom_outputs.csv`` (``file``, ``object``, ``dicom_file``, ``error``): written at the end of
    the run, or streamed as a side table of :class:`medplugin.handlers.StreamingPredictions`."""

    def __init__(self, output_dir: Path) -> None:
        self.path, self.rows = output_dir / CSV_NAME, []

    def header(self) -> list[str]:
        return list(_FIELDS)

    def add(self, file: str, kind: str, written: Path | str | None = None, error: str = "") -> None:
        self.rows.append([file, kind, str(written or ""), error])
        if error:
            logger.warning("no DICOM %s for %s: %s", kind, file, error)

    def write(self) -> None:
        if not self.rows:
            return
        buf = io.StringIO()
        csv.writer(buf).writerows([self.header(), *self.rows])
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
        kinds = {k: sum(1 for r in self.rows if r[1] == k and not r[3]) for k in ("SR", "SC", "SEG")}
        errors = sum(1 for r in self.rows if r[3])
        logger.info("DICOM results: %s (%d error(s)); listed in %s",
                    ", ".join(f"{n} {k}" for k, n in kinds.items() if n) or "none", errors, self.path)


def _message(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class DicomResultWriter(Collector):
    """Classification inference on DICOM inputs: one Structured Report per study and a Grad-CAM Secondary
    Capture for each class called positive.

    Per DICOM input (a file, or a series folder classified as one volume) the SR records the input gate's verdict
    (``in_scope``, ``out_of_scope_reason``, OOD score and threshold, from :class:`InputGateHandler`) and, unless
    the gate refused it, each class's probability (calibrated: the bundles' post-processing divides the logits by
    ``model.json``'s ``temperature``; with ``calibrated=False`` this handler applies it), and its call at
    ``model.json``'s ``operating_points`` (a class without one gets no call; the SR says so, and that an
    uncalibrated probability is one). The Secondary Captures are the Grad-CAM overlay on the
    source image's grid (a slice montage for a series), one series per input; they need the evaluator's
    :class:`medplugin.inferers.GradCAMInferer` (attach this handler before :class:`CAMSaver`, which may free its
    graph). One process writes its own inputs' results (batch inference runs in one).

    Args:
        output_dir: the run's folder (``dicom_outputs.csv``).
        class_names: class names in output order.
        bundle_root: the bundle (its folder name and ``configs/metadata.json`` version name the model).
        ckpt_dir: the folder of ``model.json``.
        dicom_output: ``auto``, ``true`` or ``false`` (see the module).
        dicom_output_dir: where the objects go (default ``<output_dir>/dicom``).
        multi_label: sigmoid outputs (findings) rather than softmax (one class).
        inferer: the evaluator's ``GradCAMInferer`` (``None``: no Secondary Captures).
        pred_key: output key of the probabilities.
        path_key: batch key of the input's path.
        finding_codes: standard codes of classes, ``{class: [value, scheme, meaning]}`` (else private codes).
        alpha: heat-map weight of the overlays.
        max_slices: slices in a series' montage.
        transform: the preprocessing to invert for the maps (default the engine's dataset ``transform``).
        calibrated: the probabilities under ``pred_key`` are already temperature-scaled (the bundles'
            inference post-processing does it with :class:`medplugin.transforms.Temperatured`); ``False``: apply
            ``model.json``'s temperature here.
        threshold: ``None``: calls at ``model.json``'s operating points; a number (or one per class): every call at
            that fixed threshold instead, as the bundle's ``threshold`` setting makes predictions.csv's calls (the
            SR then records the threshold and the criterion "fixed threshold").
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], bundle_root: str, ckpt_dir: str | None = None,
                 dicom_output: bool | str = "auto", dicom_output_dir: str | None = None, multi_label: bool = False,
                 inferer=None, pred_key: str = "pred", path_key: str = "path",
                 finding_codes: Mapping[str, Sequence[str]] | None = None, alpha: float = 0.4, max_slices: int = 8,
                 transform: Callable | None = None, calibrated: bool = True,
                 threshold: float | Sequence[float] | None = None) -> None:
        self.mode = dicom_output_mode(dicom_output)
        self.threshold = threshold
        self.calibrated = bool(calibrated)
        self.output_dir = Path(output_dir)
        self.dir = Path(dicom_output_dir) if dicom_output_dir else self.output_dir / "dicom"
        self.class_names = list(class_names)
        self.bundle_root, self.ckpt_dir = bundle_root, ckpt_dir
        self.multi_label, self.inferer = bool(multi_label), inferer
        self.pred_key, self.path_key = pred_key, path_key
        self.finding_codes = dict(finding_codes or {})
        self.alpha, self.max_slices, self.transform = float(alpha), int(max_slices), transform
        self.model = None
        self.studies: dict[str, list] = {}
        self.rows = _Rows(self.output_dir)
        self._no_cam_logged = False

    def attach(self, engine: Engine) -> None:
        if self.mode is not False:
            super().attach(engine)

    def reset(self, engine: Engine | None = None) -> None:
        self.model = bundle_model_info(self.bundle_root, self.ckpt_dir, self.class_names)
        if self.threshold is not None:  # the run's fixed threshold replaces the stored points, as in predictions.csv
            from dataclasses import replace

            from medplugin.metrics.stored import stored_operating_points

            self.model = replace(self.model, operating_points=stored_operating_points(None, self.class_names,
                                                                                     self.threshold))
        meta = read_model_json(self.ckpt_dir)
        self.ood_threshold = (meta.get("ood") or {}).get("threshold")
        self.studies, self.rows = {}, _Rows(self.output_dir)
        if self.model.temperature is None or not self.model.operating_points:
            logger.info("DICOM SR: %s", "; ".join(
                (["probabilities uncalibrated (model.json has no temperature)"] if self.model.temperature is None
                 else []) + (["no calls (model.json has no operating points)"] if not self.model.operating_points
                             else [])))

    def _calibrated(self, pred) -> dict[str, float]:
        from medplugin.metrics.calibration import apply_temperature, probabilities_to_logits

        p = torch.as_tensor(pred).detach().float().cpu().numpy().reshape(1, -1).astype(np.float64)
        if self.model.temperature is not None and not self.calibrated:
            mode = "sigmoid" if self.multi_label else "softmax"
            t = self.model.temperature
            t = [float(t[c]) for c in self.class_names] if isinstance(t, Mapping) else float(t)
            p = apply_temperature(probabilities_to_logits(p, mode), t, mode)
        return {c: float(v) for c, v in zip(self.class_names, p[0])}

    def collect(self, engine: Engine) -> None:
        from medplugin.io.dicom_results import ImageClassification, read_source

        samples = list(iter_samples(engine))
        wanted = []  # (sample, class index, probability) of the overlays to write
        for i, (b, o) in enumerate(samples):
            path = str(b.get(self.path_key) or "")
            if b.get("error"):
                continue  # predictions.csv gives its error
            sources = dicom_sources(path)
            if sources is None:
                if self.mode is True:
                    self.rows.add(path, "SR", error="not a DICOM input: DICOM results are filed with their "
                                                    "source's study")
                continue
            try:
                study = str(read_source(sources[0], image=False).StudyInstanceUID)
                for s in sources[1:]:
                    read_source(s, image=False)
            except BadInputError as e:
                self.rows.add(path, "SR", error=_message(e))
                continue
            refused = bool(o.get("refused"))
            probs = None if refused else self._calibrated(o[self.pred_key])
            points = self.model.operating_points
            calls = None if probs is None else {
                c: (p >= float(points[c]["threshold"]) if c in points else None) for c, p in probs.items()}
            image = ImageClassification(sources if len(sources) > 1 else sources[0], probs, calls,
                                        in_scope=o.get("in_scope") is not False,
                                        out_of_scope_reason=str(o.get("out_of_scope_reason") or ""),
                                        ood_score=o.get("ood_score"), ood_threshold=self.ood_threshold)
            self.studies.setdefault(study, []).append((path, image))
            wanted += [(i, k, probs[c]) for k, c in enumerate(self.class_names) if calls and calls[c]]
        if wanted:
            self._secondary_captures(engine, samples, wanted)

    def _secondary_captures(self, engine: Engine, samples: list, wanted: list) -> None:
        from pydicom.uid import generate_uid

        from medplugin.handlers.cam import CAMSaver
        from medplugin.io.dicom_results import write_cam_secondary_capture
        from medplugin.visualize.montage import cam_montage
        from medplugin.visualize.overlay import overlay_cam

        if self.inferer is None or not getattr(self.inferer, "ready", False):
            if not self._no_cam_logged:
                logger.info("no Grad-CAM Secondary Captures: the inferer keeps no Grad-CAM graph (save_cams false "
                            "or the ONNX backend)")
                self._no_cam_logged = True
            return
        maps = self.inferer.cams_for([i for i, _, _ in wanted], [k for _, k, _ in wanted]).cpu()
        helper = CAMSaver(self.inferer, str(self.output_dir), self.class_names, enabled=False, alpha=self.alpha,
                          max_slices=self.max_slices)  # its loading and map-to-input-grid steps, not attached
        transform = self.transform or _dataset_transform(engine)
        series: dict[int, tuple[str, int]] = {}
        for (i, k, prob), cam in zip(wanted, maps):
            b = samples[i][0]
            path = str(b.get(self.path_key))
            sources = dicom_sources(path)
            uid, n = series.get(i, (generate_uid(), 0))
            series[i] = (uid, n + 1)
            try:
                original = helper._load(path, cam.ndim - 1)
                if cam.ndim == 3:  # 2D: the overlay on the source's own pixel grid
                    heat = helper._on_original(cam, b, original.shape[1:], transform)
                    rgb, source = overlay_cam(original, heat[0].numpy(), self.alpha), sources[0]
                else:  # a series: a montage of the slices where the map is strongest
                    heat = helper._on_original(cam, b, original.shape, transform)
                    rgb, source = cam_montage(original.as_tensor(), heat[0], self.max_slices)[0], sources
                out = write_cam_secondary_capture(source, rgb, self.class_names[k], self.model, self.dir,
                                                  probability=prob, series_instance_uid=uid, instance_number=n + 1)
                self.rows.add(path, "SC", out)
            except Exception as e:  # noqa: BLE001 - one bad source must not stop the others
                self.rows.add(path, "SC", error=_message(e))

    def write(self, engine: Engine | None = None) -> None:
        """One SR per study (and ``dicom_outputs.csv``)."""
        from medplugin.io.dicom_results import write_classification_sr

        for items in self.studies.values():
            try:
                out = write_classification_sr([im for _, im in items], self.model, self.dir,
                                              multilabel=self.multi_label, finding_codes=self.finding_codes or None)
                for path, _ in items:
                    self.rows.add(path, "SR", out)
            except (BadInputError, ValueError) as e:
                for path, _ in items:
                    self.rows.add(path, "SR", error=_message(e))
        self.rows.write()


class DicomSegmentationWriter(SegmentationWriter):
    """:class:`SegmentationWriter` that also files each DICOM input's mask as a binary DICOM SEG.

    Streamed by :class:`medplugin.handlers.StreamingPredictions` (batch inference), ``dicom_outputs.csv`` is one of
    its ``side_tables``: its rows reach the disk with, and just before, the inputs' table rows.

    The SEG is made from the mask file the writer has just written (NIfTI for DICOM input), so its frames are
    that mask: a radiograph's mask as one frame on its pixel grid, a DICOM series' mask (on the series' voxel
    grid, given with its affine) as one frame per slice of the series. A source the SEG cannot be made on gets
    an error row in ``dicom_outputs.csv``; its mask, and the other inputs, are still written.

    Args:
        output_dir: the run's folder.
        class_names: label names (index 0 background).
        bundle_root: the bundle (names the model in the SEG).
        segments: one segment description per label 1, 2, ... (:class:`medplugin.io.dicom_results.SegmentSpec`
            or its config mapping ``{label, property_type: [value, scheme, meaning], ...}``).
        dicom_output: ``auto``, ``true`` or ``false`` (see the module).
        dicom_output_dir: where the SEGs go (default ``<output_dir>/dicom``).
        ckpt_dir: the folder of ``model.json`` (recorded nothing for segmentation yet; kept for symmetry).
        **kwargs: :class:`SegmentationWriter`'s other arguments.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str] = ("background", "foreground"),
                 bundle_root: str = ".", segments: Sequence[Any] = (), dicom_output: bool | str = "auto",
                 dicom_output_dir: str | None = None, ckpt_dir: str | None = None, **kwargs: Any) -> None:
        from medplugin.io.dicom_results import SegmentSpec

        super().__init__(output_dir, class_names, **kwargs)
        self.mode = dicom_output_mode(dicom_output)
        self.segments = [SegmentSpec.from_config(s) for s in segments]
        if self.mode is not False and not self.segments:
            raise ValueError("DicomSegmentationWriter needs segments (one description per label) for DICOM SEG.")
        self.dir = Path(dicom_output_dir) if dicom_output_dir else self.output_dir / "dicom"
        self.bundle_root, self.ckpt_dir = bundle_root, ckpt_dir
        self.dicom_rows = _Rows(self.output_dir)
        self.model = None

    @property
    def side_tables(self) -> list:
        """``dicom_outputs.csv``, for :class:`medplugin.handlers.StreamingPredictions`."""
        return [self.dicom_rows] if self.mode is not False else []

    def reset(self, engine: Engine | None = None) -> None:
        super().reset(engine)
        self.dicom_rows = _Rows(self.output_dir)
        if self.mode is not False:
            self.model = bundle_model_info(self.bundle_root, self.ckpt_dir)

    def save(self, path: str, name: str, pred, image, transform: Callable | None) -> dict:
        rec = super().save(path, name, pred, image, transform)
        if self.mode is not False:
            self._seg(path, rec)
        return rec

    def _seg(self, path: str, rec: dict) -> None:
        import nibabel as nib

        from medplugin.io.dicom_results import write_segmentation

        sources = dicom_sources(path)
        if sources is None:
            if self.mode is True:
                self.dicom_rows.add(path, "SEG", error="not a DICOM input: a SEG is filed with its source's study")
            return
        if self.model is None:
            self.model = bundle_model_info(self.bundle_root, self.ckpt_dir)
        try:
            written = nib.load(rec["mask"])
            mask = np.asarray(written.dataobj).astype(np.uint8)
            if mask.ndim == 2:  # a radiograph's mask, written with x = column: back to (rows, columns)
                out = write_segmentation(sources[0], mask.T, self.segments, self.model, self.dir)
            else:
                out = write_segmentation(sources, mask, self.segments, self.model, self.dir,
                                         mask_affine=np.asarray(written.affine))
            self.dicom_rows.add(path, "SEG", out)
        except Exception as e:  # noqa: BLE001 - one bad source must not stop the others
            self.dicom_rows.add(path, "SEG", error=_message(e))

    def write(self, engine: Engine | None = None) -> None:
        super().write(engine)
        self.dicom_rows.write()
