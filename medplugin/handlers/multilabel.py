"""Multi-label (e.g. ChestX-ray14) evaluation outputs: AUROC tables and ROC plot, per-file predictions, and
localisation scores of Grad-CAM maps against ground-truth boxes (the overlays: :class:`medplugin.handlers.CAMSaver`)."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from medplugin.handlers._engine import gather_samples, is_main_process, iter_samples
from medplugin.handlers.cam import _thresholds, crop_box_of
from medplugin.handlers.reports import PredictionWriter
from medplugin.metrics.localization import localization_report, localization_scores, scale_box
from medplugin.metrics.multilabel import multilabel_report
from medplugin.utils import atomic_write, write_json
from medplugin.visualize.plots import plot_roc

__all__ = ["MultiLabelReportWriter", "MultiLabelPredictionWriter", "LocalizationEvaluator", "image_size_of"]

logger = logging.getLogger(__name__)


def _vec(x) -> np.ndarray:
    return torch.as_tensor(x).detach().float().cpu().numpy().reshape(-1)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _fmt(v: float, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def image_size_of(path: str) -> tuple[int, int]:
    """``(H, W)`` of an image file, from its header when Pillow can read it (no full decode), else by reading it."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return int(h), int(w)
    except Exception:  # DICOM and others: read it
        from medplugin.io.image2d import read_image_2d

        arr, _ = read_image_2d(path, channels=1)
        return int(arr.shape[1]), int(arr.shape[2])


class MultiLabelReportWriter:
    """At the end of an evaluation, write ``metrics.json``, ``auroc.md``, ``auroc.csv`` and ``roc.png``.

    ``metrics.json`` holds ``n``, ``mean_auroc`` (the key figure) and per finding AUROC, positives,
    prevalence and sensitivity/specificity at ``threshold``; with a :class:`LocalizationEvaluator` given, its
    pointing-game and IoU report goes under ``localization`` and into the tables. The ROC plot has one curve
    per finding with positives and negatives.

    Args:
        output_dir: destination folder.
        class_names: finding names in output order.
        threshold: decision threshold(s) for sensitivity/specificity (one, or one per finding).
        localization: the evaluator's :class:`LocalizationEvaluator`, or ``None``.
        pred_key: output key of the probabilities.
        label_key: batch key of the 0/1 labels.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], threshold: float | Sequence[float] = 0.5,
                 localization: LocalizationEvaluator | None = None, pred_key: str = "pred",
                 label_key: str = "label") -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.threshold = _thresholds(threshold, len(self.class_names))
        self.localization = localization
        self.pred_key, self.label_key = pred_key, label_key
        self._reset()

    def _reset(self, engine: Engine | None = None) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._paths: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            self._probs.append(_vec(o[self.pred_key]))
            self._labels.append(_vec(b[self.label_key]))
            self._paths.append(str(b.get("path", "")))

    def write(self, engine: Engine | None = None) -> dict:
        n = len(self.class_names)
        probs, labels = gather_samples(engine, self._probs, self._labels)  # every rank's, in dataset order
        probs = np.stack(probs) if probs else np.zeros((0, n))
        labels = np.stack(labels) if labels else np.zeros((0, n))
        report = multilabel_report(probs, labels, self.class_names, self.threshold)
        report = {"n": report["n"], "mean_auroc": report["mean_auroc"], "n_auroc_defined": report["n_auroc_defined"],
                  "per_finding": report["per_label"]}
        loc = self.localization.report() if self.localization is not None else None
        if loc is not None:
            report["localization"] = loc
        if is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.output_dir / "metrics.json", report)
            self._tables(report, loc)
            plot_roc(probs, labels.astype(bool), self.class_names, self.output_dir / "roc.png",
                     title=f"ROC per finding (mean AUROC {_fmt(report['mean_auroc'], 3)}, n={report['n']})")
            logger.info("mean AUROC %s over %d findings on %d images -> %s", _fmt(report["mean_auroc"]),
                        report["n_auroc_defined"], report["n"], self.output_dir)
        if engine is not None:
            engine.state.metrics["mean_auroc"] = report["mean_auroc"]
        return report

    def _tables(self, report: dict, loc: dict | None) -> None:
        head = ["finding", "auroc", "positives", "prevalence", "sensitivity", "specificity", "threshold"]
        if loc is not None:
            head += ["boxes", "pointing_game_hit_rate", "mean_iou"]
        rows = []
        for name in self.class_names:
            v = report["per_finding"][name]
            row = [name, _fmt(v["auroc"]), str(v["positives"]), _fmt(v["prevalence"]), _fmt(v["sensitivity"]),
                   _fmt(v["specificity"]), _fmt(v["threshold"], 2)]
            if loc is not None:
                lv = loc["per_finding"][name]
                row += [str(lv["n_boxes"]), _fmt(lv["hit_rate"]), _fmt(lv["mean_iou"])]
            rows.append(row)
        mean = ["mean", _fmt(report["mean_auroc"]), "", "", "", "", ""]
        if loc is not None:
            mean += [str(loc["n_boxes"]), _fmt(loc["hit_rate"]), _fmt(loc["mean_iou"])]
        rows.append(mean)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(head)
        w.writerows(rows)
        _write_text(self.output_dir / "auroc.csv", buf.getvalue())
        md = [f"AUROC per finding on {report['n']} images (mean over the {report['n_auroc_defined']} findings with "
              "positive and negative images; n/a: not defined).", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        _write_text(self.output_dir / "auroc.md", "\n".join(md) + "\n")


class MultiLabelPredictionWriter(PredictionWriter):
    """Write ``predictions.csv``: file, the findings called positive, one probability per finding, error.

    ``findings`` lists (``|``-separated, ``No Finding`` when none) the findings whose probability is at least
    their threshold. A row whose input could not be read carries the error (from ``TolerantDataset``) and
    empty predictions. Written atomically at the end of the run.

    Args:
        output_dir: destination folder.
        class_names: finding names in output order.
        threshold: one threshold or one per finding.
        pred_key: output key of the probabilities.
        filename: CSV name.
        extra_columns: as :class:`PredictionWriter`'s (e.g. the input gate's columns).
    """

    prediction_column = "findings"
    lineterminator = "\n"

    def __init__(self, output_dir: str, class_names: Sequence[str], threshold: float | Sequence[float] = 0.5,
                 pred_key: str = "pred", filename: str = "predictions.csv", extra_columns: Sequence[str] = ()) -> None:
        super().__init__(output_dir, class_names, pred_key, filename, extra_columns)
        self.threshold = _thresholds(threshold, len(self.class_names))

    def _prediction(self, probs: np.ndarray) -> str:
        """The findings whose probability reaches their threshold, ``|``-separated (``No Finding`` if none)."""
        called = [c for c, v, t in zip(self.class_names, probs, self.threshold) if v >= t]
        return "|".join(called) or "No Finding"


class LocalizationEvaluator:
    """Score Grad-CAM maps against ground-truth boxes (NIH ``BBox_List_2017.csv``): pointing game and IoU.

    For every evaluated image named in the box file (matched by file name), the map of each boxed finding is
    computed at the model's input size and scored against the box mapped into that frame: boxes are in the
    pixels of the image file (1024 x 1024 for the NIH PNGs), scaled by the model size over the file's size,
    or, with a lung crop, shifted by the crop's start and scaled by the crop's size. See
    :mod:`medplugin.metrics.localization` for the scores. Writes ``localization.json`` (overall and per
    finding, plus one record per box) at the end; :class:`MultiLabelReportWriter` adds the summary to
    ``metrics.json``.

    Args:
        inferer: the evaluator's ``GradCAMInferer``.
        bbox_file: the box CSV, or ``None``/a missing file to turn the evaluation off (logged).
        output_dir: destination folder.
        class_names: finding names in output order.
        threshold: fraction of the map's range kept for the IoU (Wang et al. 2017 used several; 0.5 here).
        tolerance: pointing-game tolerance in pixels of the model input.
        on_bad_input: ``fail`` or ``skip`` for bad rows of the box file.
    """

    def __init__(self, inferer, bbox_file: str | os.PathLike | None, output_dir: str, class_names: Sequence[str],
                 threshold: float = 0.5, tolerance: float = 0.0, on_bad_input: str = "fail") -> None:
        from medplugin.data.chestxray14 import read_bbox_list

        self.inferer = inferer
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.threshold, self.tolerance = float(threshold), float(tolerance)
        self.boxes: dict[str, list] = {}
        if bbox_file and Path(bbox_file).is_file():
            self.boxes = read_bbox_list(bbox_file, on_bad_input=on_bad_input)
        elif bbox_file:
            logger.info("no box file at %s: localisation is not evaluated", bbox_file)
        self.enabled = bool(self.boxes)
        self.records: list[dict] = []
        self._per_sample: list[list[dict]] = []  # this rank's records, per sample (gathered over ranks at the end)

    def _reset(self, engine: Engine | None = None) -> None:
        self.records, self._per_sample = [], []

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self._reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
            engine.add_event_handler(Events.COMPLETED, self.write)

    def __call__(self, engine: Engine) -> None:
        samples = list(iter_samples(engine))
        found: list[list[dict]] = [[] for _ in samples]
        self._per_sample += found
        jobs = []
        for i, (b, _) in enumerate(samples):
            path = str(b.get("path") or "")
            for finding, x, y, w, h in self.boxes.get(os.path.basename(path), []):
                if finding in self.class_names:
                    jobs.append((i, self.class_names.index(finding), (x, y, w, h), path))
        if not jobs or not self.inferer.ready:
            return
        maps = self.inferer.cams_for([j[0] for j in jobs], [j[1] for j in jobs]).cpu().numpy()
        sizes: dict[str, tuple[int, int]] = {}
        for (i, c, box, path), cam in zip(jobs, maps):
            cam = cam[0]
            crop = crop_box_of(samples[i][0])
            if crop is not None:
                r0, c0, r1, c1 = crop[:4]
                scaled = scale_box(box, (r1 - r0, c1 - c0), cam.shape, offset=(r0, c0))
            else:
                if path not in sizes:
                    sizes[path] = image_size_of(path)
                scaled = scale_box(box, sizes[path], cam.shape)
            rec = localization_scores(cam, scaled, self.threshold, self.tolerance)
            rec = {"file": os.path.basename(path), "finding": self.class_names[c], "box": [round(v, 2) for v in box],
                   "box_in_model": [round(v, 2) for v in scaled], **rec}
            found[i].append(rec)
            self.records.append(rec)

    def report(self) -> dict | None:
        """The summary (``None`` when there was no box file or no evaluated image had a box)."""
        if not self.enabled or not self.records:
            return None
        rep = localization_report(self.records, self.class_names)
        rep["threshold"], rep["tolerance"] = self.threshold, self.tolerance
        return rep

    def write(self, engine: Engine | None = None) -> None:
        (per_sample,) = gather_samples(engine, self._per_sample)  # every rank's boxes, in dataset order
        self.records = [r for recs in per_sample for r in recs]
        rep = self.report()
        if rep is None:
            logger.info("no evaluated image has a box in the box file: localisation not evaluated")
            return
        if is_main_process():
            write_json(self.output_dir / "localization.json", {**rep, "boxes": self.records})
            logger.info("CAM localisation on %d boxes: pointing-game hit rate %.3f, mean IoU %.3f", rep["n_boxes"],
                        rep["hit_rate"], rep["mean_iou"])
