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
from medplugin.handlers._statistics import EvaluationStatistics
from medplugin.handlers.cam import _thresholds, crop_box_of
from medplugin.handlers.reports import PredictionWriter
from medplugin.metrics.bootstrap import format_ci
from medplugin.metrics.localization import film_localization_scores, localization_report, scale_box
from medplugin.metrics.multilabel import multilabel_report
from medplugin.utils import atomic_write, write_json
from medplugin.visualize.plots import plot_roc

__all__ = ["MultiLabelReportWriter", "MultiLabelPredictionWriter", "LocalizationEvaluator", "image_size_of"]

logger = logging.getLogger(__name__)


def _vec(x) -> np.ndarray:
    return torch.as_tensor(x).detach().float().cpu().numpy().reshape(-1)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _write_table(output_dir: Path, stem: str, head: list[str], rows: list[list[str]], caption: str) -> None:
    """``stem.csv`` and ``stem.md`` (the caption, then the table) of the same rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(rows)
    _write_text(output_dir / f"{stem}.csv", buf.getvalue())
    md = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    _write_text(output_dir / f"{stem}.md", "\n".join(md) + "\n")


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

    Issue 15's statistics, each on when configured (see :class:`~medplugin.handlers.ClassificationReportWriter`):
    with ``model_json`` and ``threshold=None`` each finding is called at its operating point chosen on validation
    (``operating_points``: sensitivity, specificity, PPV, NPV), ``calibration`` and ``reliability.png`` give the
    ECE before/after the stored temperatures; with ``bootstrap`` N > 0 every AUROC, their mean and the rates get
    a patient-level 95% interval (``auroc_ci95`` per finding, ``mean_auroc_ci95``), printed in the tables as
    "0.912 (0.884-0.936)"; with ``predictions`` the per-image file ``medplugin compare`` reads.

    Args:
        output_dir: destination folder.
        class_names: finding names in output order.
        threshold: decision threshold(s) for sensitivity/specificity (one, or one per finding); ``None``: the
            operating points stored in ``model_json``.
        localization: the evaluator's :class:`LocalizationEvaluator`, or ``None``.
        pred_key: output key of the probabilities.
        label_key: batch key of the 0/1 labels.
        model_json, bootstrap, seed, predictions, logits_key, patient_key: as for
            :class:`~medplugin.handlers.ClassificationReportWriter`.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], threshold: float | Sequence[float] | None = 0.5,
                 localization: LocalizationEvaluator | None = None, pred_key: str = "pred",
                 label_key: str = "label", model_json: str | None = None, bootstrap: int = 0, seed: int = 0,
                 predictions: str | None = None, logits_key: str | None = "logits",
                 patient_key: str = "patient_id") -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        if threshold is None and model_json is None:
            raise ValueError("threshold=None calls each finding at its stored operating point: give model_json "
                             "(the trained model's model.json) or a threshold.")
        self.statistics = EvaluationStatistics(self.class_names, "sigmoid", model_json, threshold, bootstrap, seed,
                                               predictions, logits_key, patient_key)
        points = self.statistics.points()
        self.threshold = _thresholds([points[c]["threshold"] for c in self.class_names] if points else threshold,
                                     len(self.class_names))
        self.localization = localization
        self.pred_key, self.label_key = pred_key, label_key
        self._reset()

    def _reset(self, engine: Engine | None = None) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._paths: list[str] = []
        self._logits: list = []
        self._patients: list = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            self._probs.append(_vec(o[self.pred_key]))
            self._labels.append(_vec(b[self.label_key]))
            self._paths.append(str(b.get("path", "")))
            logits, pid = self.statistics.record(b, o)
            self._logits.append(logits)
            self._patients.append(pid)

    def write(self, engine: Engine | None = None) -> dict:
        n = len(self.class_names)
        probs, labels, paths, logits, patients = gather_samples(engine, self._probs, self._labels, self._paths,
                                                                self._logits, self._patients)  # in dataset order
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
            self._add_statistics(report, probs, labels, paths, logits, patients)
            write_json(self.output_dir / "metrics.json", report)
            self._tables(report, loc)
            plot_roc(probs, labels.astype(bool), self.class_names, self.output_dir / "roc.png",
                     title=f"ROC per finding (mean AUROC {_fmt(report['mean_auroc'], 3)}, n={report['n']})")
            logger.info("mean AUROC %s over %d findings on %d images -> %s", _fmt(report["mean_auroc"]),
                        report["n_auroc_defined"], report["n"], self.output_dir)
        if engine is not None:
            engine.state.metrics["mean_auroc"] = report["mean_auroc"]
        return report

    def _add_statistics(self, report: dict, probs: np.ndarray, labels: np.ndarray, paths: list, logits: list,
                        patients: list) -> None:
        """The configured statistics (operating points, intervals, calibration, predictions.csv): rank 0 only."""
        st = self.statistics
        if not st.enabled:
            return
        report["kind"] = "multilabel"
        stats = st.compute(probs, labels, patients, "multilabel")
        iv = stats["intervals"]
        if iv:
            if "mean_auroc" in iv:
                report["mean_auroc_ci95"] = iv["mean_auroc"]
            for name in self.class_names:
                v = report["per_finding"][name]
                v["auroc_ci95"] = iv[f"{name}_auroc"]
                for k in ("sensitivity", "specificity"):
                    if f"{name}_{k}" in iv:
                        v[f"{k}_ci95"] = iv[f"{name}_{k}"]
        st.add_to_report(report, stats, probs, labels, logits, self.output_dir)
        calls = st.calls(probs)
        if calls is None:
            calls = (probs >= self.threshold[None, :]).astype(int) if st.predictions else None
        called = ["|".join(c for c, k in zip(self.class_names, row) if k) or "No Finding"
                  for row in (calls if calls is not None else np.zeros((probs.shape[0], 0)))]
        st.write_predictions(self.output_dir, paths, patients, MultiLabelPredictionWriter.prediction_column, called,
                             probs, labels.astype(int), calls)

    def _cell(self, value, name: str, key: str, digits: int = 4) -> str:
        """A table cell: the value, with its 95% interval when the run has intervals (3 decimals then)."""
        ci = (self._report["per_finding"].get(name, {}) if name else self._report).get(f"{key}_ci95")
        return format_ci(value, ci) if ci is not None else _fmt(value, digits)

    def _tables(self, report: dict, loc: dict | None) -> None:
        self._report = report
        head = ["finding", "auroc", "positives", "prevalence", "sensitivity", "specificity", "threshold"]
        if loc is not None:
            head += ["boxes", "pointing_game_hit_rate", "mean_iou"]
        rows = []
        for name in self.class_names:
            v = report["per_finding"][name]
            row = [name, self._cell(v["auroc"], name, "auroc"), str(v["positives"]), _fmt(v["prevalence"]),
                   self._cell(v["sensitivity"], name, "sensitivity"), self._cell(v["specificity"], name, "specificity"),
                   _fmt(v["threshold"], 2 if not self.statistics.enabled else 4)]
            if loc is not None:
                lv = loc["per_finding"][name]
                row += [str(lv["n_boxes"]), _fmt(lv["hit_rate"]), _fmt(lv["mean_iou"])]
            rows.append(row)
        mean = ["mean", self._cell(report["mean_auroc"], "", "mean_auroc"), "", "", "", "", ""]
        if loc is not None:
            mean += [str(loc["n_boxes"]), _fmt(loc["hit_rate"]), _fmt(loc["mean_iou"])]
        rows.append(mean)
        _write_table(self.output_dir, "auroc", head, rows,
                     f"AUROC per finding on {report['n']} images (mean over the {report['n_auroc_defined']} findings "
                     "with positive and negative images; n/a: not defined).")


class MultiLabelPredictionWriter(PredictionWriter):
    """Write ``predictions.csv``: file, the findings called positive, one probability per finding, error.

    ``findings`` lists (``|``-separated, ``No Finding`` when none) the findings whose probability is at least
    their threshold. A row whose input could not be read carries the error (from ``TolerantDataset``) and
    empty predictions. Written atomically at the end of the run.

    With the model's ``model_json``, one ``call_<finding>`` column (0/1) per finding follows the probabilities
    (see :class:`~medplugin.handlers.PredictionWriter`), and ``threshold=None`` calls each finding at its
    operating point stored there (chosen on validation).

    Args:
        output_dir: destination folder.
        class_names: finding names in output order.
        threshold: one threshold or one per finding; ``None``: the stored operating points (``model_json``).
        pred_key: output key of the probabilities.
        filename: CSV name.
        model_json: the model's ``model.json``.
        calls: write the ``call_`` columns (default: when ``model_json`` is given).
        extra_columns: as :class:`PredictionWriter`'s (e.g. the input gate's columns).
    """

    prediction_column = "findings"
    lineterminator = "\n"

    def __init__(self, output_dir: str, class_names: Sequence[str], threshold: float | Sequence[float] | None = 0.5,
                 pred_key: str = "pred", filename: str = "predictions.csv", model_json: str | None = None,
                 calls: bool | None = None, extra_columns: Sequence[str] = ()) -> None:
        if threshold is None and model_json is None:
            raise ValueError("threshold=None calls each finding at its stored operating point: give model_json "
                             "(the trained model's model.json) or a threshold.")
        if threshold is not None:
            _thresholds(threshold, len(class_names))  # checked first: its message names the bad value
        super().__init__(output_dir, class_names, pred_key, filename, model_json, threshold, calls, extra_columns)
        self.threshold = self.call_thresholds

    def _prediction(self, probs: np.ndarray) -> str:
        """The findings whose probability reaches their threshold, ``|``-separated (``No Finding`` if none)."""
        called = [c for c, v, t in zip(self.class_names, probs, self.threshold) if v >= t]
        return "|".join(called) or "No Finding"


class LocalizationEvaluator:
    """Score Grad-CAM maps against ground-truth boxes (NIH ``BBox_List_2017.csv``): pointing game and IoU.

    For every evaluated image named in the box file (matched by file name), the map of each boxed finding is
    computed at the model's input size and scored as the literature does
    (:func:`medplugin.metrics.localization.film_localization_scores`): the map's peak is carried back into the
    pixels of the image file, the film (1024 x 1024 for the NIH PNGs; with a lung crop, through the crop's start
    and size), and the pointing game (Zhang et al. 2018) grows the box by ``tolerance`` *film* pixels; a trivial
    guess, the film's centre, is scored the same way beside it (``centre_hit_rate``); IoU and IoBB (Wang et al.
    2017) of the thresholded map's box, with the localisation accuracy at T(IoBB) 0.1-0.9 and T(IoU) 0.1-0.7.
    Writes ``localization.json`` (overall and per finding, plus one record per box) and ``localization.md``/
    ``localization.csv`` at the end; :class:`MultiLabelReportWriter` adds the summary to ``metrics.json``.

    Args:
        inferer: the evaluator's ``GradCAMInferer``.
        bbox_file: the box CSV, or ``None``/a missing file to turn the evaluation off (logged).
        output_dir: destination folder.
        class_names: finding names in output order.
        threshold: fraction of the map's range kept for the IoU (Wang et al. 2017 used several; 0.5 here).
        tolerance: pointing-game tolerance in pixels of the film (the image file; Zhang et al. used 15).
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
            if path not in sizes:
                sizes[path] = image_size_of(path)
            crop = crop_box_of(samples[i][0])
            if crop is not None:
                r0, c0, r1, c1 = crop[:4]
                region, offset = (r1 - r0, c1 - c0), (r0, c0)
            else:
                region, offset = sizes[path], (0, 0)
            scaled = scale_box(box, region, cam.shape, offset=offset)
            rec = film_localization_scores(cam, box, region, offset, sizes[path], self.threshold, self.tolerance)
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
            self._tables(rep)
            logger.info("CAM localisation on %d boxes: pointing-game hit rate %.3f (centre guess %.3f, tolerance "
                        "%g film pixels), mean IoU %.3f", rep["n_boxes"], rep["hit_rate"], rep["centre_hit_rate"],
                        self.tolerance, rep["mean_iou"])

    def _tables(self, rep: dict) -> None:
        """``localization.md``/``.csv``: per finding the pointing-game hit rate of the model's map beside the
        centre guess's, the mean IoU and IoBB, and the accuracy at each T(IoBB) and T(IoU)."""
        iobb_t, iou_t = list(rep["iobb_accuracy"]), list(rep["iou_accuracy"])
        head = ["finding", "boxes", "pointing_game_hit_rate", "centre_guess_hit_rate", "mean_iou", "mean_iobb",
                *[f"acc_iobb>{t}" for t in iobb_t], *[f"acc_iou>{t}" for t in iou_t]]
        rows = []
        for name, v in [*rep["per_finding"].items(), ("all", rep)]:
            if not v["n_boxes"]:
                continue
            rows.append([name, str(v["n_boxes"]), _fmt(v["hit_rate"], 3), _fmt(v["centre_hit_rate"], 3),
                         _fmt(v["mean_iou"], 3), _fmt(v["mean_iobb"], 3),
                         *[_fmt(v["iobb_accuracy"][t], 3) for t in iobb_t],
                         *[_fmt(v["iou_accuracy"][t], 3) for t in iou_t]])
        _write_table(self.output_dir, "localization", head, rows,
                     f"CAM localisation on {rep['n_boxes']} boxes: pointing game with a tolerance of "
                     f"{self.tolerance:g} pixels of the film (Zhang et al. 2018), beside a trivial guess of the film's "
                     "centre; accuracy at T(IoBB) as ChestX-ray8 (Wang et al. 2017, Table 4) and at T(IoU), the map "
                     f"thresholded at {self.threshold:g} of its range.")
