"""Segmentation outputs for 2D and 3D bundles: masks on the input's own grid with their regions, Dice reports.

One writer and one report writer serve the lung radiograph (2D) and the knee MRI (3D) bundles; what differs
is only the file format of a mask (PNG for PNG/JPEG input, NIfTI otherwise) and whether an item is called an
image (2D) or an exam (3D) in the reports.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from medplugin.handlers._engine import Collector, gather_samples, is_main_process, iter_samples
from medplugin.transforms.spatial.array import has_trace, to_input_grid
from medplugin.utils import atomic_write, safe_name, write_json

__all__ = ["SegmentationWriter", "SegmentationReportWriter", "foreground", "dice_iou", "region_record"]

logger = logging.getLogger(__name__)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def foreground(pred) -> np.ndarray:
    """Boolean foreground ``(*spatial)`` of a channel-first prediction or reference: with several channels
    (probabilities, one-hot) the voxels whose most likely class is not channel 0, with one channel (a label map
    or a foreground probability) the voxels above 0.5."""
    p = _np(pred)
    if p.ndim < 3:
        raise ValueError(f"expected a channel-first 2D or 3D prediction (C, *spatial), got shape {p.shape}.")
    return p.argmax(0) > 0 if p.shape[0] > 1 else p[0] > 0.5


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice (1945) and IoU of two boolean masks with MONAI's ``compute_dice`` and ``compute_iou``.

    The empty-mask rule (``ignore_empty=False``): when the reference is empty, both are 1 if the prediction is
    empty too and 0 otherwise; a case never drops out of a mean.
    """
    from monai.metrics import compute_dice, compute_iou

    p = torch.as_tensor(np.asarray(pred, bool))[None, None].float()
    t = torch.as_tensor(np.asarray(truth, bool))[None, None].float()
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)
    iou = compute_iou(p, t, include_background=True, ignore_empty=False)
    return float(dice.reshape(-1)[0]), float(iou.reshape(-1)[0])


def region_record(mask: np.ndarray, affine: np.ndarray | None = None) -> dict:
    """The foreground region of a 2D or 3D mask: size, share of the image, bounding box in voxels and in mm.

    Args:
        mask: ``(*spatial)`` mask (> 0 is foreground), in the voxel order ``affine`` maps.
        affine: 4x4 voxel-to-world (mm) matrix of the mask's axes, or ``None`` when unknown (a PNG).

    Returns:
        ``{"image_size", "voxels", "area_fraction", "spacing_mm", "volume_mm3" (3D) or "area_mm2" (2D),
        "bbox_voxel": {"start", "end"} | None, "bbox_mm": {"min", "max"} | None}`` and in 2D ``"bbox": {"x", "y",
        "width", "height"} | None`` (x to the right, y down, in pixels). The voxel box is end-exclusive; the mm
        box spans the outer faces of the boundary voxels; mm values are ``None`` without an affine.
    """
    fg = np.asarray(mask) > 0
    sd = fg.ndim
    n = int(fg.sum())
    size_key = "volume_mm3" if sd == 3 else "area_mm2"
    out = {"image_size": list(fg.shape), "voxels": n, "area_fraction": round(n / max(fg.size, 1), 6),
           "spacing_mm": None, size_key: None, "bbox_voxel": None, "bbox_mm": None}
    if sd == 2:
        out["bbox"] = None
    a = None if affine is None else np.asarray(affine, dtype=np.float64)
    if a is not None:
        out["spacing_mm"] = np.linalg.norm(a[:3, :sd], axis=0).round(4).tolist()
        measure = abs(float(np.linalg.det(a[:sd, :sd]))) if sd == 3 else float(np.prod(out["spacing_mm"]))
        out[size_key] = round(n * measure, 3)
    if not n:
        return out
    idx = np.nonzero(fg)
    start = np.array([int(i.min()) for i in idx])
    end = np.array([int(i.max()) + 1 for i in idx])
    out["bbox_voxel"] = {"start": start.tolist(), "end": end.tolist()}
    if sd == 2:
        out["bbox"] = {"x": int(start[1]), "y": int(start[0]), "width": int(end[1] - start[1]),
                       "height": int(end[0] - start[0])}
    if a is not None:
        corners = np.array([[s if bit == 0 else e for s, e, bit in zip(start - 0.5, end - 0.5, bits)]
                            for bits in np.ndindex(*(2,) * sd)])
        mm = corners @ a[:3, :sd].T + a[:3, 3]
        out["bbox_mm"] = {"min": mm.min(0).round(3).tolist(), "max": mm.max(0).round(3).tolist()}
    return out


def _dataset_transform(engine: Engine) -> Callable | None:
    """The preprocessing of the engine's dataset (``transform`` of a MONAI ``Dataset``), if any."""
    ds = getattr(getattr(engine, "data_loader", None), "dataset", None)
    return getattr(ds, "transform", None) or getattr(getattr(ds, "_ds", None), "transform", None)


def _is_volume_format(path: str) -> bool:
    """DICOM or NIfTI input: its 2D mask is written as NIfTI."""
    from medplugin.io.dicom import has_dicom_magic
    from medplugin.io.image2d import DICOM_SUFFIXES, IMAGE_SUFFIXES, NIFTI_SUFFIXES

    low = path.lower()
    if low.endswith(NIFTI_SUFFIXES) or Path(low).suffix in DICOM_SUFFIXES:
        return True
    return Path(low).suffix not in IMAGE_SUFFIXES and has_dicom_magic(path)


def _affine_2d(path: str) -> np.ndarray | None:
    """The voxel-to-world matrix of a 2D mask of ``path`` in its written axis order (x = column, y = row): a NIfTI
    input's own affine; for DICOM a diagonal of *Pixel Spacing* (else *Imager Pixel Spacing*), or ``None`` when
    the file has none or a non-positive one (e.g. ``0\\0``; the mask is then written with the identity)."""
    if path.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(path).affine, dtype=np.float64)
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            row, col = (float(v) for v in ds.get(kw)[:2])
        except (TypeError, ValueError, IndexError):
            continue
        if np.isfinite([row, col]).all() and row > 0 and col > 0:
            return np.diag([col, row, 1.0, 1.0])
    return None


class SegmentationWriter(Collector):
    """Write each predicted mask on its input's own grid, with its region, for batch inference (2D and 3D).

    Per input the prediction (network resolution) goes back to the loaded image's grid through the inverse of
    the preprocessing (MONAI's ``Invertd``: the foreground, bilinearly, then > 0.5; needs a preprocessing that
    keeps its ``MetaTensor`` record, e.g. a :class:`medplugin.data.TolerantDataset` with ``keep_meta``), is
    reduced to its ``keep_components`` largest regions with holes filled if asked (MONAI's
    ``KeepLargestConnectedComponent`` and ``FillHoles``), and back in the voxel order of its file
    (:class:`~medplugin.transforms.ToOriginalOrientation`). Files:

    - ``masks/<name>.png`` (0/255) for PNG/JPEG/BMP/TIFF input, else ``masks/<name>.nii.gz`` (``uint8`` labels;
      a 2D mask with axes x = column, y = row and a NIfTI input's affine or a DICOM's pixel spacing; a 3D mask on
      the input file's grid and affine);
    - ``boxes/<name>.json``: the item's record (:func:`region_record` plus ``file``, ``mask``, ``error``);
    - the table ``csv_name`` (file, mask, voxels, area_fraction, volume_mm3 or area_mm2, x, y, width, height (2D),
      voxel and mm box, error), one row per input, and ``rois.json`` (``{"class_names", "images" | "exams":
      [records]}``, in the table's order), made from the table and the records on disk when the table is complete.

    An input that could not be read (``error`` from the dataset) gets its error and no mask; the others are
    still written. Names come from the entry's ``name`` or file stem, never from file contents; nothing is
    written into the input folder; all files are written atomically, each mask by the process that computed it.

    Attached itself, the writer keeps the table's rows and writes the table and ``rois.json`` at the end of the
    run (one process). Under :class:`medplugin.handlers.StreamingPredictions` (batch inference) the rows go to
    disk batch by batch, after the masks and records of their batch: an input's row is what marks its result
    complete (``--resume true`` skips it); the ranks of a multi-process run each write their own masks.

    Args:
        output_dir: the run's output folder.
        class_names: label names (index 0 is background).
        pred_key: output key of the prediction.
        keep_components: largest regions kept in each mask (``None``: all).
        fill_holes: fill holes inside the kept regions.
        csv_name: name of the table.
        transform: the preprocessing to invert; default the engine's dataset ``transform``.
        image_key: batch key of the preprocessed image (its record of the preprocessing).
        spatial_dims: 2 (images) or 3 (exams): the table's columns; needed before the first mask when streaming
            (``None``: from the first mask written).
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str] = ("background", "foreground"),
        pred_key: str = "pred",
        keep_components: int | None = None,
        fill_holes: bool = False,
        csv_name: str = "predictions.csv",
        transform: Callable | None = None,
        image_key: str = "image",
        spatial_dims: int | None = None,
    ) -> None:
        if keep_components is not None and int(keep_components) < 1:
            raise ValueError(f"keep_components must be None or an int >= 1, got {keep_components!r}.")
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.pred_key, self.image_key = pred_key, image_key
        self.keep_components, self.fill_holes = keep_components, bool(fill_holes)
        self.csv_name = csv_name
        self.transform = transform
        if spatial_dims not in (None, 2, 3):
            raise ValueError(f"spatial_dims must be None, 2 or 3, got {spatial_dims!r}.")
        self.spatial_dims = spatial_dims
        self.rows: list[list] = []
        self._dims: int | None = spatial_dims

    @property
    def path(self) -> Path:
        """The table."""
        return self.output_dir / self.csv_name

    def reset(self, engine: Engine | None = None) -> None:
        self.rows.clear()

    def collect(self, engine: Engine) -> None:
        """Write the masks of this iteration's items and keep their table rows."""
        transform = self.transform or _dataset_transform(engine)
        for b, o in iter_samples(engine):
            path = str(b.get("path") or b.get("image_path") or "")
            rec = {"file": path, "mask": "", "error": str(b.get("error", "") or "")}
            if not rec["error"]:
                try:
                    rec.update(self.save(path, str(b.get("name") or Path(path).stem), o[self.pred_key],
                                         b.get(self.image_key), transform))
                except Exception as e:  # noqa: BLE001 - one bad item must not stop the batch
                    msg = str(e).splitlines()[0] if str(e) else ""
                    rec["error"] = f"{path}: cannot write its mask ({type(e).__name__}: {msg})"
                    logger.warning("%s", rec["error"])
            self.rows.append(self._row(rec))

    def save(self, path: str, name: str, pred, image, transform: Callable | None) -> dict:
        """Write the mask of one input; returns its record."""
        from medplugin.transforms import ToOriginalOrientation, clean_mask

        fg = torch.as_tensor(foreground(pred))[None]
        if has_trace(image) and transform is not None:
            mask = to_input_grid(fg.float(), image, transform, image_key=self.image_key) > 0.5
        else:  # nothing to invert: keep the label values
            p = _np(pred)
            labels = torch.as_tensor(p.argmax(0)[None] if p.shape[0] > 1 else np.rint(p[:1]))
            mask = to_input_grid(labels, image, None)
        mask = torch.as_tensor(mask.as_tensor() if isinstance(mask, MetaTensor) else mask).to(torch.uint8)
        if self.keep_components is not None or self.fill_holes:
            mask = clean_mask(mask, self.keep_components, self.fill_holes)
        sd = mask.ndim - 1
        self._dims = sd
        name = safe_name(name[:-4] if name.lower().endswith(".nii") else name)  # "x.nii.gz" -> "x"
        if sd == 3 or _is_volume_format(path):
            from medplugin.visualize.overlay import save_nifti

            if sd == 3:
                on_file = ToOriginalOrientation()(mask, ref=image) if isinstance(image, MetaTensor) else mask
                data = _np(on_file)[0]
                affine = _np(on_file.affine) if isinstance(on_file, MetaTensor) else np.eye(4)
                world = affine
            else:
                affine = _affine_2d(path)
                data = _np(mask)[0].T  # (rows, cols) -> x = column, y = row
                world = None if affine is None else affine[:, [1, 0, 2, 3]]  # for (row, col) indices
                affine = np.eye(4) if affine is None else affine
            out = self.output_dir / "masks" / f"{name}.nii.gz"
            save_nifti(out, np.ascontiguousarray(data, dtype=np.uint8), affine)
            rec = region_record(data.T if sd == 2 else data, world)
        else:
            from PIL import Image

            data = _np(mask)[0]
            out = self.output_dir / "masks" / f"{name}.png"
            atomic_write(out, lambda tmp: Image.fromarray((data > 0).astype(np.uint8) * np.uint8(255)).save(
                tmp, format="PNG"))
            rec = region_record(data)
        rec = {"file": path, "mask": str(out), **rec, "error": ""}
        write_json(self.output_dir / "boxes" / f"{name}.json", rec)
        if not rec["voxels"]:
            logger.warning("%s: empty mask", path)
        return rec

    def header(self) -> list[str]:
        """The table's columns."""
        if self._dims is None:
            raise ValueError("SegmentationWriter: give spatial_dims (2 or 3) to stream its table.")
        return ["file", "mask", "voxels", "area_fraction", "area_mm2" if self._dims == 2 else "volume_mm3",
                *(["x", "y", "width", "height"] if self._dims == 2 else []), "bbox_voxel_start", "bbox_voxel_end",
                "bbox_mm_min", "bbox_mm_max", "error"]

    def _row(self, rec: dict) -> list:
        """One input's table row from its record (the columns of :meth:`header`, of the record's dimension; an input
        without a mask before the dimension is known: file, mask and error, widened by :meth:`write`)."""
        if "voxels" not in rec:
            blank = len(self.header()) - 3 if self._dims else 0
            return [rec["file"], rec.get("mask", ""), *[""] * blank, rec.get("error", "")]
        two_d = "bbox" in rec
        bv, bm, box = rec.get("bbox_voxel") or {}, rec.get("bbox_mm") or {}, rec.get("bbox") or {}

        def _v(v) -> str:
            return "" if v is None else v

        def _j(v) -> str:
            return " ".join(map(str, v)) if v else ""

        return [rec["file"], rec.get("mask", ""), _v(rec.get("voxels", "")), _v(rec.get("area_fraction", "")),
                _v(rec.get("area_mm2" if two_d else "volume_mm3", "")),
                *([box.get(k, "") for k in ("x", "y", "width", "height")] if two_d else []),
                _j(bv.get("start")), _j(bv.get("end")), _j(bm.get("min")), _j(bm.get("max")), rec.get("error", "")]

    def write(self, engine: Engine | None = None) -> None:
        """Write the table and ``rois.json`` (the writer attached itself, one process)."""
        if not is_main_process():
            return
        if self._dims is None:
            self._dims = 3  # nothing written: every input failed
        header = self.header()
        rows = [r if len(r) == len(header) else [*r[:2], *[""] * (len(header) - 3), r[-1]] for r in self.rows]
        buf = io.StringIO()
        csv.writer(buf).writerows([header, *rows])
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
        self.write_summary()

    def write_summary(self) -> None:
        """Write ``rois.json``: the record of each input of the complete table, in its order (read from the
        ``boxes/`` records, one at a time)."""
        import json

        if self._dims is None:
            self._dims = 3
        key = "images" if self._dims == 2 else "exams"
        n = n_err = 0

        def _w(tmp: str) -> None:
            nonlocal n, n_err
            with open(self.path, newline="", encoding="utf-8") as table, open(tmp, "w") as f:
                f.write(f'{{\n  "class_names": {json.dumps(self.class_names)},\n  "{key}": [')
                for row in csv.DictReader(table):
                    mask = row.get("mask") or ""
                    box = self.output_dir / "boxes" / f"{_mask_name(mask)}.json"
                    rec = json.loads(box.read_text()) if mask and box.is_file() else {
                        "file": row["file"], "mask": mask, "error": row.get("error", "")}
                    f.write(("," if n else "") + "\n    " + json.dumps(rec))
                    n, n_err = n + 1, n_err + bool(rec.get("error"))
                f.write("\n  ]\n}\n")

        atomic_write(self.output_dir / "rois.json", _w)
        logger.info("%d masks (%d errors) in %s", n - n_err, n_err, self.output_dir)


def _mask_name(mask: str) -> str:
    """The name of a written mask file (``masks/<name>.png`` or ``masks/<name>.nii.gz``)."""
    name = Path(mask).name
    return name[:-7] if name.endswith(".nii.gz") else Path(name).stem


class SegmentationReportWriter(Collector):
    """Evaluation report of a binary segmentation (2D or 3D): ``metrics.json`` and ``dice.png``.

    Per item (an image in 2D, an exam in 3D) the Dice and IoU of the foregrounds (:func:`foreground`) at the
    network's resolution, by MONAI's ``compute_dice``/``compute_iou`` with the empty-mask rule of
    :func:`dice_iou`. ``metrics.json`` holds ``n``, ``mean_dice``, ``median_dice``, ``std_dice``, ``min_dice``,
    ``mean_iou`` and ``per_image`` (2D) or ``per_exam`` (3D): file, Dice, IoU, true and predicted foreground
    pixels (voxels), and their absolute difference. The mean Dice also goes to the engine's metrics as
    ``mean_dice``. With ``bootstrap`` N > 0, ``mean_dice_ci95`` is its patient-level 95% bootstrap interval
    (issue 15; each row then carries its ``patient_id``, which ``medplugin compare`` resamples).

    Args:
        output_dir: where to write.
        pred_key: output key of the prediction (label map, one-hot or probabilities).
        label_key: output key of the reference mask.
        bootstrap: resamples of the interval of the mean Dice (0: none).
        seed: the bootstrap's seed.
        patient_key: batch key of the patient id (missing: items are resampled one by one).
    """

    def __init__(self, output_dir: str, pred_key: str = "pred", label_key: str = "label", bootstrap: int = 0,
                 seed: int = 0, patient_key: str = "patient_id") -> None:
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key = pred_key, label_key
        self.bootstrap, self.seed, self.patient_key = int(bootstrap), int(seed), patient_key
        self.rows: list[dict] = []
        self._dims = 2

    def reset(self, engine: Engine | None = None) -> None:
        self.rows.clear()

    def _interval(self, rows: list[dict], metrics: dict) -> None:
        """``mean_dice_ci95`` and ``bootstrap`` (patient-level when every row has a patient id)."""
        from medplugin.metrics.bootstrap import bootstrap_intervals, ci_entries, mean_figure

        ids = [r.get("patient_id") for r in rows]
        ids = None if any(p in (None, "") for p in ids) else ids
        res = bootstrap_intervals({"mean_dice": mean_figure([r["dice"] for r in rows])}, ids, len(rows),
                                  self.bootstrap, self.seed)
        metrics["mean_dice_ci95"] = ci_entries(res)["mean_dice_ci95"]
        metrics["bootstrap"] = {"n_resamples": self.bootstrap, "seed": self.seed, "level": 0.95,
                                "resampling_unit": "patient" if ids is not None else "image",
                                "n_patients": len(set(ids)) if ids is not None else len(rows)}

    def collect(self, engine: Engine) -> None:
        """Score this iteration's items."""
        for b, o in iter_samples(engine):
            pred, truth = foreground(o[self.pred_key]), foreground(o[self.label_key])
            self._dims = pred.ndim
            unit = "pixels" if pred.ndim == 2 else "voxels"
            meta_path = getattr(b.get("image"), "meta", {}).get("filename_or_obj", "")
            path = b.get("path") or b.get("image_path") or meta_path
            dice, iou = dice_iou(pred, truth)
            t, p = int(truth.sum()), int(pred.sum())
            self.rows.append({"file": str(path), "dice": round(dice, 6), "iou": round(iou, 6), f"true_{unit}": t,
                              f"pred_{unit}": p, f"volume_error_{unit}": abs(p - t)})
            pid = b.get(self.patient_key) if self.bootstrap else None
            if pid not in (None, ""):
                self.rows[-1]["patient_id"] = str(pid)

    def write(self, engine: Engine | None = None) -> dict:
        """Write ``metrics.json`` and ``dice.png`` (rank 0, over every rank's items in dataset order); returns the
        metrics."""
        noun = "image" if self._dims == 2 else "exam"
        (rows,) = gather_samples(engine, self.rows)
        if not rows:
            raise ValueError(f"no {noun}s were evaluated: the test split is empty")
        d = np.array([r["dice"] for r in rows])
        metrics = {"n": len(rows), "mean_dice": float(d.mean()), "median_dice": float(np.median(d)),
                   "std_dice": float(d.std()), "min_dice": float(d.min()),
                   "mean_iou": float(np.mean([r["iou"] for r in rows])), f"per_{noun}": rows}
        if engine is not None:
            engine.state.metrics["mean_dice"] = metrics["mean_dice"]
        if is_main_process():
            if self.bootstrap:
                self._interval(rows, metrics)
            write_json(self.output_dir / "metrics.json", metrics)
            self._plot(d, rows, noun)
            logger.info("mean Dice %.4f over %d %ss (metrics.json in %s)", metrics["mean_dice"], len(d), noun,
                        self.output_dir)
        return metrics

    def _plot(self, dice: np.ndarray, rows: list[dict], noun: str) -> None:
        from medplugin.visualize.plots import _figure

        plt = _figure()
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [3, 1]})
        names = [Path(r["file"]).name.replace(".nii.gz", "").replace(".nii", "").rsplit(".", 1)[0] for r in rows]
        order = np.argsort(dice)
        ax0.bar(range(len(dice)), dice[order], color="tab:blue")
        ax0.set_xticks(range(len(dice)), [names[i] for i in order], rotation=70, fontsize=7)
        ax0.set_ylim(0, 1)
        ax0.set_ylabel("Dice")
        ax0.set_title(f"Dice per {noun} (mean {dice.mean():.3f}, n={len(dice)})")
        ax1.boxplot(dice, widths=0.6)
        ax1.set_ylim(0, 1)
        ax1.set_xticks([])
        ax1.set_title("distribution")
        fig.tight_layout()
        atomic_write(self.output_dir / "dice.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)

