"""Class activation maps of classifiers, 2D and 3D, single- and multi-label: files per evaluated input, and
TensorBoard images of fixed validation inputs over the epochs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from medplugin.handlers._engine import is_main_process, iter_samples
from medplugin.handlers.segmentation import _dataset_transform
from medplugin.transforms.spatial.array import has_trace, to_input_grid
from medplugin.utils import as_flag, safe_name
from medplugin.visualize.cam import CapturedGradCAM
from medplugin.visualize.montage import cam_montage
from medplugin.visualize.overlay import overlay_cam, resize_map, save_nifti, save_png

__all__ = ["CAMSaver", "TensorBoardCAMHandler", "crop_box_of"]

logger = logging.getLogger(__name__)


def _vec(x) -> np.ndarray:
    return torch.as_tensor(x).detach().float().cpu().numpy().reshape(-1)


def _label(b: dict) -> int | None:
    return None if "label" not in b else int(torch.as_tensor(b["label"]).reshape(-1)[0])


def _thresholds(threshold, n: int) -> np.ndarray:
    t = np.asarray(threshold, dtype=np.float64).ravel()
    t = np.broadcast_to(t, (n,)) if t.size == 1 else t
    if t.shape != (n,) or not np.all((t >= 0) & (t <= 1)):
        raise ValueError(f"threshold must be one number or {n} numbers in [0, 1], got {threshold!r}.")
    return t.copy()


def crop_box_of(item: dict) -> list[int] | None:
    """The 2D crop of an item, ``[r0, c0, r1, c1, H, W]`` (:class:`medplugin.transforms.CropBoxToTensord`), or
    ``None`` when the item was not cropped."""
    box = item.get("crop_box")
    if box is None:
        return None
    b = [int(v) for v in torch.as_tensor(box).reshape(-1).tolist()]
    return b if len(b) == 6 and b[0] >= 0 else None


class CAMSaver:
    """Save each evaluated input's Grad-CAM on the input's own grid: PNG overlays (2D), NIfTI and montages (3D).

    Needs the evaluator's inferer to be a :class:`medplugin.inferers.GradCAMInferer` (its forward pass is the
    one explained). The map (network input size) goes back on the loaded image's grid through the inverse of
    the preprocessing (MONAI's ``Invertd``; resize, crops and slice padding undone, cropped-away regions zero)
    when the batch's image carries its record of the preprocessing (a ``MetaTensor`` image); else a 2D lung
    crop's ``crop_box`` places it over the crop's region; else it is resized to the whole loaded image.

    - single-label (default): the map of the predicted class; with ``only_misclassified`` only for inputs whose
      prediction differs from their ``label``. Files ``<name>_pred-<class>_gradcam.png`` (2D) or
      ``<name>_pred-<class>_cam.nii.gz`` (on the input file's voxel grid and affine) and ``..._montage.png`` (the
      ``max_slices`` slices where the map is strongest) in 3D; ``_true-<class>`` is added with
      ``only_misclassified``.
    - ``multi_label``: a map per finding whose probability reaches its threshold, or per finding in ``findings``
      for every input; files ``<name>_<finding>_p<prob>_gradcam.png`` (``max_images`` inputs at most).

    Names come from the entry's ``name`` or file stem, never from file contents. With ``summary_writer`` the
    3D montages also go to TensorBoard.

    Args:
        inferer: the evaluator's ``GradCAMInferer``.
        output_dir: files go to ``output_dir/<subdir>``.
        class_names: class (finding) names in output order.
        only_misclassified: single-label: keep only inputs whose prediction differs from their ``label``.
        subdir: sub-folder name.
        alpha: heat-map weight of the overlays.
        pred_key: output key of the class probabilities.
        enabled: ``False`` turns the handler off (e.g. ``save_cams: false``).
        multi_label: explain findings (see above) instead of the predicted class.
        findings: multi-label: names to explain for every input, or ``None`` (each finding above its threshold).
        threshold: multi-label: one threshold or one per finding.
        max_images: stop after this many inputs with maps (``None``: all).
        max_slices: slices in a 3D montage.
        summary_writer: optional ``SummaryWriter`` for the 3D montages.
        npy_spacing: voxel size assumed for MRNet ``.npy`` inputs, as the preprocessing's.
        transform: the preprocessing to invert; default the engine's dataset ``transform``.
        image_key: batch key of the preprocessed image.
    """

    def __init__(self, inferer, output_dir: str, class_names: Sequence[str], only_misclassified: bool = False,
                 subdir: str = "cams", alpha: float = 0.4, pred_key: str = "pred", enabled: bool = True,
                 multi_label: bool = False, findings: Sequence[str] | None = None,
                 threshold: float | Sequence[float] = 0.5, max_images: int | None = None, max_slices: int = 8,
                 summary_writer=None, npy_spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 transform: Callable | None = None, image_key: str = "image") -> None:
        self.inferer = inferer
        self.enabled = as_flag(enabled, "enabled")  # '--save_cams false' arrives as a string
        self.dir = Path(output_dir) / subdir
        self.class_names = list(class_names)
        unknown = [f for f in (findings or []) if f not in self.class_names]
        if unknown:
            raise ValueError(f"findings {unknown} are not among {self.class_names}.")
        self.findings = None if findings is None else [self.class_names.index(f) for f in findings]
        self.multi_label = bool(multi_label)
        self.threshold = _thresholds(threshold, len(self.class_names))
        self.only_misclassified = only_misclassified
        self.alpha, self.pred_key, self.image_key = alpha, pred_key, image_key
        self.max_images, self.max_slices = max_images, int(max_slices)
        self.writer = summary_writer
        self.npy_spacing = tuple(npy_spacing)
        self.transform = transform
        self.saved: list[str] = []
        self._images = 0

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, lambda e: setattr(self, "_images", 0))
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _pairs(self, samples: list) -> list[tuple[int, int, float]]:
        """``(sample, class, probability)`` of the maps wanted from this batch."""
        pairs = []
        for i, (b, o) in enumerate(samples):
            refused = isinstance(o, dict) and o.get("refused")  # by the input gate (gate: refuse)
            if b.get("error") or refused or (self.max_images is not None and self._images >= self.max_images):
                continue
            p = _vec(o[self.pred_key])
            if self.multi_label:
                wanted = self.findings if self.findings is not None else np.flatnonzero(p >= self.threshold).tolist()
            else:
                pred = int(p.argmax())
                wanted = [] if self.only_misclassified and _label(b) in (None, pred) else [pred]
            if wanted:
                self._images += 1
                pairs += [(i, int(c), float(p[c])) for c in wanted]
        return pairs

    def __call__(self, engine: Engine) -> None:
        if not self.inferer.ready:
            return
        samples = list(iter_samples(engine))
        pairs = self._pairs(samples)
        maps = self.inferer.cams_for([i for i, _, _ in pairs], [c for _, c, _ in pairs]).cpu() if pairs else []
        if not self.multi_label:  # single-label: nobody else asks, free the graph; multi-label: the localisation may
            self.inferer.release()
        if not pairs:
            return
        # under several processes each rank writes the files of its own images (max_images counts per rank)
        transform = self.transform or _dataset_transform(engine)
        originals: dict[int, object] = {}
        for (i, c, prob), cam in zip(pairs, maps):
            b = samples[i][0]
            path = str(b.get("path") or "")
            if i not in originals:
                try:
                    originals[i] = self._load(path, cam.ndim - 1)
                except Exception as e:  # the maps are a by-product: log and go on
                    logger.warning("no CAM for %s: %s", path, e)
                    originals[i] = None
            if originals[i] is None:
                continue
            stem = Path(path).name.split(".")[0] if cam.ndim == 4 else Path(path).stem  # "x.nii.gz" -> "x"
            name = safe_name(b.get("name") or stem or f"item{len(self.saved)}")
            try:
                self._save(name, b, c, prob, cam, originals[i], transform)
            except Exception as e:  # noqa: BLE001
                logger.warning("no CAM for %s: %s", path, e)
        if self.writer is not None:
            self.writer.flush()

    def _load(self, path: str, spatial_dims: int):
        """The input as loaded, for the overlay: ``(C, H, W)`` array (2D) or a ``(S, H, W)`` MetaTensor (3D)."""
        if not path:
            raise ValueError("the batch has no path to the input")
        if spatial_dims == 3:
            from medplugin.transforms import LoadKneeVolume

            return LoadKneeVolume(channel_first=False, npy_spacing=self.npy_spacing)(path)
        from medplugin.io.image2d import read_image_2d

        return read_image_2d(path, channels=None)[0]

    def _on_original(self, cam: torch.Tensor, item: dict, shape: Sequence[int], transform) -> torch.Tensor:
        """The map ``(1, *spatial)`` of the network input on the loaded input's grid of ``shape``."""
        image = item.get(self.image_key)
        if has_trace(image) and transform is not None:
            heat = to_input_grid(cam, image, transform, image_key=self.image_key)
        elif len(shape) == 2 and crop_box_of(item) is not None:
            r0, c0, r1, c1 = crop_box_of(item)[:4]
            heat = torch.zeros(1, *shape)
            heat[0, r0:r1, c0:c1] = torch.as_tensor(resize_map(cam, (r1 - r0, c1 - c0)))
        else:
            heat = cam
        heat = torch.as_tensor(heat.as_tensor() if hasattr(heat, "as_tensor") else heat).float()
        if tuple(heat.shape[1:]) != tuple(shape):
            mode = "bilinear" if len(shape) == 2 else "trilinear"
            heat = torch.nn.functional.interpolate(heat[None], size=tuple(shape), mode=mode, align_corners=False)[0]
        return heat

    def _save(self, name: str, b: dict, c: int, prob: float, cam: torch.Tensor, original, transform) -> None:
        if self.multi_label:
            stem = f"{name}_{self.class_names[c]}_p{prob:.2f}"
        else:
            stem = f"{name}_pred-{self.class_names[c]}"
            if self.only_misclassified:
                stem = f"{name}_true-{self.class_names[_label(b)]}_pred-{self.class_names[c]}"
        if cam.ndim == 3:  # 2D
            heat = self._on_original(cam, b, original.shape[1:], transform)
            save_png(self.dir / f"{stem}_gradcam.png", overlay_cam(original, heat[0].numpy(), self.alpha))
        else:
            from monai.data import MetaTensor

            from medplugin.transforms import ToOriginalOrientation

            heat = self._on_original(cam, b, original.shape, transform)
            on_file = ToOriginalOrientation()(MetaTensor(heat), ref=original)
            save_nifti(self.dir / f"{stem}_cam.nii.gz", on_file[0].numpy().astype(np.float32),
                       on_file.affine.double().numpy())
            rgb, _ = cam_montage(original.as_tensor(), heat[0], self.max_slices)
            save_png(self.dir / f"{stem}_montage.png", rgb)
            if self.writer is not None:
                self.writer.add_image(f"gradcam_montage/{stem}", rgb, 0, dataformats="HWC")
        self.saved.append(stem)


class TensorBoardCAMHandler:
    """Every ``interval`` epochs, write Grad-CAM images of the same validation inputs to TensorBoard (2D and 3D).

    The inputs are prepared once (``max_images`` of ``data`` through ``transform``; with class-index labels taken
    one class after another, so every class is shown, not the first images of the first class). Each image shows
    the map of the true class when a label is known (else the predicted class), tagged
    ``<tag>/<i>_true-<class>`` with the prediction as text. A multi-label image (a 0/1 label per class, e.g. the
    chest findings) shows one map per finding it has (the most probable finding when it has none), tagged
    ``<tag>/<i>_<finding>`` with that finding's probability and the true label set as text. A reviewer sees
    the model's attention sharpen over epochs: a 2D image overlaid with its map, a 3D volume as a montage of the
    ``max_slices`` network-input slices where the map is strongest. The network's train/eval mode is restored. MONAI's
    ``TensorBoardImageHandler`` skips classification outputs; this one is for them.

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        network: the network being trained.
        layer: Grad-CAM layer name (see ``medplugin.networks.cam_layer``).
        data: datalist entries (``image`` path and ``label``).
        transform: the deterministic preprocessing.
        class_names: names for the tags.
        device: where to run.
        max_images: how many inputs.
        interval: epochs between writes.
        tag: tag prefix.
        max_slices: slices per 3D montage.
    """

    def __init__(self, summary_writer, network: torch.nn.Module, layer: str, data: Sequence[dict],
                 transform: Callable, class_names: Sequence[str], device: str | torch.device = "cpu",
                 max_images: int = 8, interval: int = 1, tag: str = "gradcam", max_slices: int = 8) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images!r}.")
        self.writer = summary_writer
        self.network = network
        self.layer = layer
        self.data = _one_class_after_another(list(data), max_images)
        self.transform = transform
        self.class_names = list(class_names)
        self.device = torch.device(device)
        self.interval = int(interval)
        self.tag = tag
        self.max_slices = int(max_slices)
        self._inputs: list[torch.Tensor] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        if not self.data or not is_main_process():
            return
        if self._inputs is None:
            self._inputs = [torch.as_tensor(np.asarray(self.transform(dict(d))["image"]), dtype=torch.float32)
                            for d in self.data]
        net = self.network.module if hasattr(self.network, "module") else self.network
        cam = CapturedGradCAM(net, self.layer)
        for i, (x, d) in enumerate(zip(self._inputs, self.data)):
            label = d.get("label")
            if _is_multi_hot(label, len(self.class_names)):
                self._write_findings(engine, cam, i, x, np.asarray(label, dtype=float))
                continue
            target = int(label) if isinstance(label, (int, np.integer)) else None
            maps, logits = cam(x[None].to(self.device), class_idx=[target])
            m = maps[0, 0].cpu()
            rgb = overlay_cam(x, m.numpy()) if m.ndim == 2 else cam_montage(x[0], m, self.max_slices)[0]
            tag = f"{self.tag}/{i:02d}_true-{self.class_names[target] if target is not None else '?'}"
            self.writer.add_image(tag, rgb, engine.state.epoch, dataformats="HWC")
            self.writer.add_text(f"{tag}/prediction", self.class_names[int(logits.argmax(1)[0])], engine.state.epoch)
        self.writer.flush()

    def _write_findings(self, engine: Engine, cam: CapturedGradCAM, i: int, x: torch.Tensor, label: np.ndarray) -> None:
        """One map per finding of a multi-label image: tag by finding, its probability and the true set as text."""
        positives = [int(j) for j in np.flatnonzero(label > 0.5)]
        logits = None
        if not positives:  # no finding: the one the model finds most probable
            _, logits = cam(x[None].to(self.device), class_idx=[None])
            positives = [int(logits.argmax(1)[0])]
        truth = ", ".join(self.class_names[j] for j in np.flatnonzero(label > 0.5)) or "none"
        for j in positives:
            maps, logits = cam(x[None].to(self.device), class_idx=[j])
            m = maps[0, 0].cpu()
            rgb = overlay_cam(x, m.numpy()) if m.ndim == 2 else cam_montage(x[0], m, self.max_slices)[0]
            tag = f"{self.tag}/{i:02d}_{safe_name(self.class_names[j])}"
            self.writer.add_image(tag, rgb, engine.state.epoch, dataformats="HWC")
            p = float(torch.sigmoid(logits[0, j].float()))
            self.writer.add_text(f"{tag}/prediction", f"p({self.class_names[j]}) = {p:.3f}; true: {truth}",
                                 engine.state.epoch)


def _is_multi_hot(label, n_classes: int) -> bool:
    """Whether ``label`` is a 0/1 vector over the classes (a multi-label target)."""
    if isinstance(label, (str, bytes)) or label is None or np.ndim(label) != 1:
        return False
    return len(label) == n_classes and n_classes > 1


def _one_class_after_another(data: list[dict], n: int) -> list[dict]:
    """``n`` entries of ``data``, class-index labels taken in turn (every class shown); else the first ``n``."""
    labels = [d.get("label") for d in data]
    if not data or not all(isinstance(lab, (int, np.integer)) and not isinstance(lab, bool) for lab in labels):
        return data[:n]
    groups: dict[int, list[dict]] = {}
    for d, lab in zip(data, labels):
        groups.setdefault(int(lab), []).append(d)
    out: list[dict] = []
    while len(out) < n and any(groups.values()):
        for g in groups.values():
            if g and len(out) < n:
                out.append(g.pop(0))
    return out
