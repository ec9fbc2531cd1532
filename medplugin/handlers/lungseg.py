"""Handlers for 2D (lung) segmentation: masks and bounding boxes per file, Dice reports, TensorBoard panels."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from medplugin.handlers._engine import gather_samples, is_main_process, iter_samples
from medplugin.handlers.panels import TensorBoardPanelHandler, mask_panel, to_numpy
from medplugin.utils import atomic_write, safe_name, write_json

__all__ = ["LungMaskWriter", "Segmentation2dReportWriter", "TensorBoardMaskHandler", "foreground_probability"]

logger = logging.getLogger(__name__)


_np = to_numpy


def foreground_probability(pred) -> np.ndarray:
    """``(H, W)`` float map of the foreground from a 2D prediction: probabilities or one-hot ``(C, H, W)``
    with C > 1 (everything but channel 0), or a label map / probability ``(1, H, W)`` or ``(H, W)``."""
    p = _np(pred).astype(np.float32)
    if p.ndim == 3:
        p = p[1:].sum(0) if p.shape[0] > 1 else p[0]
    if p.ndim != 2:
        raise ValueError(f"expected a 2D prediction (C, H, W) or (H, W), got shape {p.shape}.")
    return p


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def _is_volume_format(path: str) -> bool:
    """DICOM or NIfTI input: its mask is written as NIfTI."""
    from medplugin.io.image2d import DICOM_SUFFIXES, IMAGE_SUFFIXES, NIFTI_SUFFIXES, _has_dicom_magic

    low = path.lower()
    if low.endswith(NIFTI_SUFFIXES) or Path(low).suffix in DICOM_SUFFIXES:
        return True
    return Path(low).suffix not in IMAGE_SUFFIXES and _has_dicom_magic(path)


def _nifti_affine(path: str) -> tuple[np.ndarray, list[float] | None]:
    """The voxel-to-world matrix for the mask of ``path`` and the pixel spacing ``[row, column]`` mm (``None`` when
    unknown): a NIfTI input's own affine; for DICOM a diagonal of *Pixel Spacing* (else *Imager Pixel Spacing*;
    x = column, y = row), or the identity when the file has none or a non-positive one (e.g. ``0\\0``)."""
    if path.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        affine = np.asarray(nib.load(path).affine, dtype=np.float64)
        return affine, [float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 0]))]
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            row, col = (float(v) for v in ds.get(kw)[:2])
        except (TypeError, ValueError, IndexError):
            continue
        if np.isfinite([row, col]).all() and row > 0 and col > 0:
            return np.diag([col, row, 1.0, 1.0]), [row, col]
    return np.eye(4), None


class LungMaskWriter:
    """Write, per inference input, the lung mask at the image's own size and the lungs' bounding box.

    The prediction (network resolution) is resized to the image's size (bilinear on the foreground
    probability, then > 0.5), reduced to its ``keep_components`` largest regions with holes filled
    (:func:`medplugin.transforms.chest.clean_lung_mask`), and written as ``masks/<name>.png`` (0/255) for
    PNG/JPEG/BMP/TIFF input, or ``masks/<name>.nii.gz`` (uint8 0/1, axes x = column, y = row; a NIfTI input's
    affine, a DICOM's pixel spacing) for DICOM and NIfTI input. The box goes to ``boxes/<name>.json``
    (``{"file", "mask", "image_size": [rows, cols], "bbox": {"x", "y", "width", "height"} | null,
    "area_fraction", "pixel_spacing", "bbox_mm"}``) and, for all files, to ``lung_boxes.csv`` (file, mask, x, y,
    width, height, area_fraction, error). An input that could not be read (``error`` from
    :class:`medplugin.data.TolerantDataset`) gets a CSV row with its error; the others are still written.
    Nothing is written into the input folder; all files are written atomically.

    Args:
        output_dir: destination folder.
        pred_key: output key of the prediction (label map or probabilities).
        keep_components: largest regions kept (2: the lungs; ``None``: all).
        fill_holes: fill holes inside the kept regions.
    """

    def __init__(self, output_dir: str, pred_key: str = "pred", keep_components: int | None = 2,
                 fill_holes: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.pred_key = pred_key
        self.keep_components = keep_components
        self.fill_holes = fill_holes
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            path = str(b.get("path", ""))
            err = b.get("error", "")
            if not err:
                try:
                    self.rows.append(self.save(path, str(b.get("name") or Path(path).stem), o[self.pred_key]))
                    continue
                except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
                    err = f"{path}: cannot write its mask ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                    logger.warning("%s", err)
            self.rows.append({"file": path, "mask": "", "x": "", "y": "", "width": "", "height": "",
                              "area_fraction": "", "error": str(err)})

    def save(self, path: str, name: str, pred) -> dict:
        """Write the mask and box of one input; returns its CSV row."""
        from medplugin.data.lungseg import image_size_2d
        from medplugin.transforms.chest import clean_lung_mask, lung_bounding_box

        rows, cols = image_size_2d(path)
        prob = torch.as_tensor(foreground_probability(pred))[None, None]
        prob = F.interpolate(prob, size=(rows, cols), mode="bilinear", align_corners=False)[0, 0].numpy()
        mask = clean_lung_mask(prob > 0.5, self.keep_components, self.fill_holes)
        name = safe_name(name[:-4] if name.lower().endswith(".nii") else name)  # "x.nii.gz" -> "x"
        spacing = None
        if is_main_process():
            if _is_volume_format(path):
                import nibabel as nib

                affine, spacing = _nifti_affine(path)
                out = self.output_dir / "masks" / f"{name}.nii.gz"
                img = nib.Nifti1Image(np.ascontiguousarray(mask.T), affine)
                atomic_write(out, lambda tmp: _gz(tmp, img))
            else:
                from PIL import Image

                out = self.output_dir / "masks" / f"{name}.png"
                atomic_write(out, lambda tmp: Image.fromarray(mask * np.uint8(255)).save(tmp, format="PNG"))
        else:
            out = self.output_dir / "masks" / name
        box = lung_bounding_box(mask)
        bbox = None if box is None else {k: box[k] for k in ("x", "y", "width", "height")}
        record = {
            "file": path,
            "mask": str(out),
            "image_size": [rows, cols],
            "bbox": bbox,
            "area_fraction": 0.0 if box is None else box["area_fraction"],
            "pixel_spacing": spacing,
            "bbox_mm": None if bbox is None or spacing is None else
            {"width": round(bbox["width"] * spacing[1], 3), "height": round(bbox["height"] * spacing[0], 3)},
        }
        if is_main_process():
            write_json(self.output_dir / "boxes" / f"{name}.json", record)
        if box is None:
            logger.warning("%s: no lung found", path)
        return {"file": path, "mask": str(out), **({k: bbox[k] for k in bbox} if bbox else
                {"x": "", "y": "", "width": "", "height": ""}), "area_fraction": record["area_fraction"], "error": ""}

    def write(self, engine: Engine | None = None) -> None:
        if not is_main_process():
            return
        buf = io.StringIO()
        fields = ["file", "mask", "x", "y", "width", "height", "area_fraction", "error"]
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write(self.output_dir / "lung_boxes.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
        n_err = sum(1 for r in self.rows if r["error"])
        logger.info("wrote %d lung masks (%d errors) to %s", len(self.rows) - n_err, n_err, self.output_dir)


def _gz(tmp: str, img) -> None:
    """nibabel picks compression from the file name: write to ``tmp`` through a ``.nii.gz`` name."""
    import nibabel as nib

    gz = tmp + ".nii.gz"
    nib.save(img, gz)
    os.replace(gz, tmp)


class Segmentation2dReportWriter:
    """Evaluation report of a 2D binary segmentation: ``metrics.json`` and ``dice.png``.

    ``metrics.json`` holds ``n``, ``mean_dice`` (Dice 1945, foreground only; both masks empty count 1),
    ``median_dice``, ``std_dice``, ``min_dice``, ``mean_iou`` and per image the file, Dice, IoU and the true and
    predicted foreground pixels, at the network's resolution. The mean Dice is also put in the engine's
    metrics as ``mean_dice``.

    Args:
        output_dir: where to write.
        pred_key: output key of the prediction (label map or probabilities).
        label_key: output key of the reference mask.
    """

    def __init__(self, output_dir: str, pred_key: str = "pred", label_key: str = "label") -> None:
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key = pred_key, label_key
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            pred = foreground_probability(o[self.pred_key]) > 0.5
            truth = foreground_probability(o[self.label_key]) > 0.5
            self.rows.append({"file": str(b.get("path", "")), "dice": round(_dice(pred, truth), 6),
                              "iou": round(_iou(pred, truth), 6), "true_pixels": int(truth.sum()),
                              "pred_pixels": int(pred.sum())})

    def write(self, engine: Engine | None = None) -> dict:
        (rows,) = gather_samples(engine, self.rows)  # every rank's images, in dataset order
        if not rows:
            raise ValueError("no images were evaluated: the test split is empty")
        d = np.array([r["dice"] for r in rows])
        metrics = {"n": len(rows), "mean_dice": float(d.mean()), "median_dice": float(np.median(d)),
                   "std_dice": float(d.std()), "min_dice": float(d.min()),
                   "mean_iou": float(np.mean([r["iou"] for r in rows])), "per_image": rows}
        if engine is not None:
            engine.state.metrics["mean_dice"] = metrics["mean_dice"]
        if is_main_process():
            write_json(self.output_dir / "metrics.json", metrics)
            self._plot(d, rows)
            logger.info("mean Dice %.4f over %d images (metrics.json in %s)", metrics["mean_dice"], len(d), self.output_dir)
        return metrics

    def _plot(self, dice: np.ndarray, rows: list[dict]) -> None:
        from medplugin.visualize.plots import _figure

        plt = _figure()
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [3, 1]})
        names = [Path(r["file"]).stem for r in rows]
        order = np.argsort(dice)
        ax0.bar(range(len(dice)), dice[order], color="tab:blue")
        ax0.set_xticks(range(len(dice)), [names[i] for i in order], rotation=70, fontsize=7)
        ax0.set_ylim(0, 1)
        ax0.set_ylabel("Dice")
        ax0.set_title(f"Dice per image (mean {dice.mean():.3f}, n={len(dice)})")
        ax1.boxplot(dice, widths=0.6)
        ax1.set_ylim(0, 1)
        ax1.set_xticks([])
        ax1.set_title("distribution")
        fig.tight_layout()
        atomic_write(self.output_dir / "dice.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)


class TensorBoardMaskHandler(TensorBoardPanelHandler):
    """Show validation segmentations in TensorBoard as three panels: image | reference (green) | prediction (red).

    Attach to the evaluator; the first ``max_images`` validation images are written at the end of each
    evaluation under ``<tag>/<i>``, with the trainer's epoch as the step (MONAI's ``ValidationHandler`` runs
    the evaluator with it).

    Args:
        summary_writer: a TensorBoard ``SummaryWriter``.
        max_images: images shown per evaluation.
        tag: image tag prefix.
        image_key, label_key, pred_key: keys in the engine's output.
    """

    def __init__(self, summary_writer, max_images: int = 4, tag: str = "val_masks", image_key: str = "image",
                 label_key: str = "label", pred_key: str = "pred") -> None:
        super().__init__(summary_writer, max_images, tag, image_key, label_key, pred_key)

    def panel(self, image: np.ndarray, label, pred) -> np.ndarray:
        """The radiograph (first channel), its reference and predicted lung masks (foreground > 0.5)."""
        img = image[0] if image.ndim == 3 else image
        truth = None if label is None else foreground_probability(label) > 0.5
        return mask_panel(img, truth, foreground_probability(pred) > 0.5)
