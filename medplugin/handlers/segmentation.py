"""Handlers for 3D segmentation bundles: masks as NIfTI with ROI boxes, Dice reports, TensorBoard slices."""

from __future__ import annotations

import csv
import gzip
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events

from medplugin.handlers._engine import gather_samples, is_main_process, iter_samples
from medplugin.handlers.panels import TensorBoardPanelHandler, mask_panel, to_numpy
from medplugin.utils import atomic_write, write_json

__all__ = ["SegmentationWriter", "SegmentationReportWriter", "TensorBoardSliceHandler", "mask_of", "dice_score",
           "roi_box"]

logger = logging.getLogger(__name__)


_np = to_numpy


def mask_of(pred) -> np.ndarray:
    """Integer label map ``(S, H, W)`` from a prediction: one-hot/probabilities ``(C, S, H, W)`` (argmax over C)
    or labels ``(1, S, H, W)``/``(S, H, W)``."""
    p = _np(pred)
    if p.ndim == 4:
        p = p.argmax(0) if p.shape[0] > 1 else p[0]
    return p.astype(np.uint8)


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks (foreground = voxels > 0); 1.0 when both are empty (Dice 1945)."""
    a, b = pred > 0, truth > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def roi_box(mask: np.ndarray, affine: np.ndarray) -> dict:
    """Bounding box of a mask's foreground in voxels (end-exclusive) and in mm (RAS, voxel corners).

    Args:
        mask: ``(I, J, K)`` label map on the grid of ``affine``.
        affine: 4x4 voxel-to-RAS matrix.

    Returns:
        ``{"voxels", "volume_mm3", "bbox_voxel": {"start", "end"} | None, "bbox_mm": {"min", "max"} | None}``;
        the mm box spans the outer faces of the boundary voxels.
    """
    fg = mask > 0
    affine = np.asarray(affine, dtype=np.float64)
    n = int(fg.sum())
    out = {"voxels": n, "volume_mm3": round(n * abs(float(np.linalg.det(affine[:3, :3]))), 3),
           "bbox_voxel": None, "bbox_mm": None}
    if not n:
        return out
    idx = np.nonzero(fg)
    start = np.array([int(i.min()) for i in idx])
    end = np.array([int(i.max()) + 1 for i in idx])
    corners = np.array([[s if b == 0 else e for s, e, b in zip(start - 0.5, end - 0.5, bits)]
                        for bits in np.ndindex(2, 2, 2)])
    mm = corners @ affine[:3, :3].T + affine[:3, 3]
    out["bbox_voxel"] = {"start": start.tolist(), "end": end.tolist()}
    out["bbox_mm"] = {"min": mm.min(0).round(3).tolist(), "max": mm.max(0).round(3).tolist()}
    return out


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    payload = gzip.compress(raw, compresslevel=6) if path.name.endswith(".gz") else raw

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(payload)

    atomic_write(path, _w)


class SegmentationWriter:
    """Write each predicted mask as NIfTI on its input's grid, and its ROI box, for batch inference.

    Per exam: ``masks/<name>.nii.gz`` (``uint8`` labels, the input file's voxel order and affine, from the
    ``original_affine``/``file_axes`` that :class:`~medplugin.data.knee_segmentation.TolerantVolumeDataset`
    carries), and a record in ``rois.json`` and a row in ``predictions.csv``: foreground voxels, volume in mm³,
    the bounding box in voxels (end-exclusive) and in RAS mm. An input that could not be read gets its error
    and no mask; the others are still written.

    Args:
        output_dir: the run's output folder.
        class_names: label names (index 0 is background).
        pred_key: output key of the prediction.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str] = ("background", "foreground"),
                 pred_key: str = "pred") -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.pred_key = pred_key
        self.records: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        if not is_main_process():
            return
        for b, o in iter_samples(engine):
            path, name, err = str(b.get("path", "")), str(b.get("name", "")), b.get("error", "")
            rec = {"file": path, "mask": "", "voxels": "", "volume_mm3": "", "bbox_voxel": None, "bbox_mm": None,
                   "error": err}
            if not err:
                try:
                    mask = mask_of(o[self.pred_key])
                    axes = _np(b.get("file_axes", [0, 1, 2])).astype(int).tolist()
                    affine = _np(b.get("original_affine", np.eye(4))).astype(np.float64)
                    mask = np.ascontiguousarray(mask.transpose(np.argsort(axes)))
                    out = self.output_dir / "masks" / f"{name or 'exam'}.nii.gz"
                    _save_nifti(out, mask, affine)
                    rec.update(roi_box(mask, affine), mask=str(out))
                except Exception as e:  # one bad item must not stop the batch
                    rec["error"] = f"{path}: could not write the mask ({type(e).__name__}: {e})"
                    logger.warning("%s", rec["error"])
            self.records.append(rec)

    def write(self, engine: Engine | None = None) -> None:
        if not is_main_process():
            return
        write_json(self.output_dir / "rois.json", {"class_names": self.class_names, "exams": self.records})

        def _w(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["file", "mask", "voxels", "volume_mm3", "bbox_voxel_start", "bbox_voxel_end",
                            "bbox_mm_min", "bbox_mm_max", "error"])
                for r in self.records:
                    bv, bm = r["bbox_voxel"] or {}, r["bbox_mm"] or {}
                    w.writerow([r["file"], r["mask"], r["voxels"], r["volume_mm3"],
                                " ".join(map(str, bv.get("start", []))), " ".join(map(str, bv.get("end", []))),
                                " ".join(map(str, bm.get("min", []))), " ".join(map(str, bm.get("max", []))),
                                r["error"]])

        atomic_write(self.output_dir / "predictions.csv", _w)
        n_err = sum(bool(r["error"]) for r in self.records)
        logger.info("wrote %d masks (%d errors) to %s", len(self.records) - n_err, n_err, self.output_dir)


class SegmentationReportWriter:
    """Evaluation report of a binary segmentation: per-exam Dice, ``metrics.json`` and ``dice.png``.

    ``metrics.json`` holds ``n``, ``mean_dice``, ``median_dice``, ``std_dice``, ``min_dice`` and per exam the
    file, Dice, true and predicted foreground voxels, and the absolute volume error in voxels.

    Args:
        output_dir: where to write.
        pred_key: output key of the prediction (one-hot or labels).
        label_key: output key of the reference mask (one-hot or labels).
    """

    def __init__(self, output_dir: str, pred_key: str = "pred", label_key: str = "label") -> None:
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key = pred_key, label_key
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            pred, truth = mask_of(o[self.pred_key]), mask_of(o[self.label_key])
            path = b.get("image_path") or getattr(b.get("image"), "meta", {}).get("filename_or_obj", "")
            self.rows.append({"file": str(path), "dice": round(dice_score(pred, truth), 6),
                              "true_voxels": int((truth > 0).sum()), "pred_voxels": int((pred > 0).sum())})

    def write(self, engine: Engine | None = None) -> dict:
        (rows,) = gather_samples(engine, self.rows)  # every rank's exams, in dataset order
        if not rows:
            raise ValueError("no exams were evaluated: the test split is empty")
        d = np.array([r["dice"] for r in rows])
        metrics = {"n": len(rows), "mean_dice": float(d.mean()), "median_dice": float(np.median(d)),
                   "std_dice": float(d.std()), "min_dice": float(d.min()),
                   "per_exam": [{**r, "volume_error_voxels": abs(r["pred_voxels"] - r["true_voxels"])} for r in rows]}
        if is_main_process():
            write_json(self.output_dir / "metrics.json", metrics)
            self._plot(d, rows)
            logger.info("mean Dice %.4f over %d exams (metrics.json in %s)", metrics["mean_dice"], len(d), self.output_dir)
        return metrics

    def _plot(self, dice: np.ndarray, rows: list[dict]) -> None:
        from medplugin.visualize.plots import _figure

        plt = _figure()
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [3, 1]})
        names = [Path(r["file"]).name.replace(".nii.gz", "").replace(".nii", "") for r in rows]
        order = np.argsort(dice)
        ax0.bar(range(len(dice)), dice[order], color="tab:blue")
        ax0.set_xticks(range(len(dice)), [names[i] for i in order], rotation=70, fontsize=7)
        ax0.set_ylim(0, 1)
        ax0.set_ylabel("Dice")
        ax0.set_title(f"Dice per exam (mean {dice.mean():.3f}, n={len(dice)})")
        ax1.boxplot(dice, widths=0.6)
        ax1.set_ylim(0, 1)
        ax1.set_xticks([])
        ax1.set_title("distribution")
        fig.tight_layout()
        atomic_write(self.output_dir / "dice.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)


class TensorBoardSliceHandler(TensorBoardPanelHandler):
    """Show validation segmentations in TensorBoard: per exam the slice with the most reference (else predicted)
    foreground, as three panels (image | reference in green | prediction in red).

    Attach to the evaluator; images are written at the end of each evaluation with the trainer's epoch
    (MONAI's ``ValidationHandler`` runs the evaluator with it) as the step.

    Args:
        summary_writer: a TensorBoard ``SummaryWriter``.
        max_images: exams shown per evaluation.
        tag: image tag prefix.
        image_key, label_key, pred_key: keys in the engine's output.
    """

    def __init__(self, summary_writer, max_images: int = 4, tag: str = "val_slices", image_key: str = "image",
                 label_key: str = "label", pred_key: str = "pred") -> None:
        super().__init__(summary_writer, max_images, tag, image_key, label_key, pred_key)

    def panel(self, image: np.ndarray, label, pred) -> np.ndarray:
        """The slice with the most reference (else predicted) foreground, its reference and prediction."""
        img = image[0] if image.ndim == 4 else image
        pred = mask_of(pred)
        label = mask_of(label) if label is not None else None
        ref = label if label is not None and label.any() else pred
        k = int(ref.reshape(ref.shape[0], -1).sum(1).argmax())
        return mask_panel(img[k], None if label is None else label[k], pred[k])

