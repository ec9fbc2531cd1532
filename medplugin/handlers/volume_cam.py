"""Handlers for volume classifiers (knee MRI): CAMs as NIfTI and PNG montages, TensorBoard montages and
confusion matrices."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from medplugin.handlers._engine import is_main_process, iter_samples
from medplugin.utils import atomic_write, safe_name
from medplugin.visualize.cam import GradCAM
from medplugin.visualize.montage import cam_montage
from medplugin.visualize.overlay import save_png

__all__ = ["VolumeCAMSaver", "TensorBoardVolumeCAMHandler", "TensorBoardConfusionMatrix", "save_cam_nifti"]

logger = logging.getLogger(__name__)


def _label(b: dict) -> int | None:
    if "label" not in b:
        return None
    return int(torch.as_tensor(b["label"]).reshape(-1)[0])


def save_cam_nifti(path: str | Path, cam: np.ndarray, meta: dict) -> None:
    """Write a map on :class:`~medplugin.transforms.LoadKneeVolume`'s grid as NIfTI on the input file's grid.

    ``meta`` is the loaded volume's meta dict: with ``file_axes`` and ``original_affine`` (NIfTI input) the map
    is put back in the file's voxel order with the file's own affine; otherwise (DICOM, ``.npy``) the loaded
    ``(slice, row, col)`` grid and its affine are written.
    """
    import nibabel as nib

    from medplugin.transforms.knee import to_file_grid

    axes = meta.get("file_axes")
    affine = np.asarray(torch.as_tensor(meta.get("original_affine", meta.get("affine"))).double().numpy())
    arr = to_file_grid(cam, axes) if axes is not None else np.asarray(cam)
    img = nib.Nifti1Image(np.ascontiguousarray(arr, dtype=np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    data = gzip.compress(img.to_bytes(), compresslevel=6) if str(path).endswith(".gz") else img.to_bytes()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


class VolumeCAMSaver:
    """Save each volume's Grad-CAM as NIfTI on the input's voxel grid (same affine) and as a PNG montage.

    Needs the evaluator's inferer to be a :class:`medplugin.inferers.GradCAMInferer` (per-slice maps of a 2.5D
    network, a 3D map of a 3D network) and the batch to carry the 12-number ``geometry`` of
    :class:`~medplugin.transforms.knee.KneeClassificationInputd`, which puts the map back on the loaded
    volume's grid (ROI crop, resize and slice padding undone). The montage shows the ``max_slices`` slices
    of the original volume where the map is strongest. Files: ``<name>_pred-<class>_cam.nii.gz`` and
    ``..._montage.png`` (``_true-<class>`` added with ``only_misclassified``); names come from the entry's
    ``name`` or file stem, never from file contents. With ``summary_writer`` the montages also go to
    TensorBoard.

    Args:
        inferer: the evaluator's ``GradCAMInferer``.
        output_dir: files go to ``output_dir/<subdir>``.
        class_names: class names in output order.
        only_misclassified: keep only volumes whose prediction differs from their ``label``.
        subdir: sub-folder name.
        max_slices: slices in the montage.
        summary_writer: optional ``SummaryWriter`` for the montages.
        npy_spacing: voxel size assumed for ``.npy`` inputs (as the preprocessing).
        pred_key: output key of the class probabilities.
        enabled: ``False`` turns the handler off.
    """

    def __init__(self, inferer, output_dir: str, class_names: Sequence[str], only_misclassified: bool = False,
                 subdir: str = "cams", max_slices: int = 8, summary_writer=None,
                 npy_spacing: Sequence[float] = (1.0, 1.0, 1.0), pred_key: str = "pred", enabled: bool = True) -> None:
        self.inferer = inferer
        self.dir = Path(output_dir) / subdir
        self.class_names = list(class_names)
        self.only_misclassified = only_misclassified
        self.max_slices = int(max_slices)
        self.writer = summary_writer
        self.npy_spacing = tuple(npy_spacing)
        self.pred_key = pred_key
        self.enabled = enabled
        self.saved: list[dict] = []

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from medplugin.transforms.io import LoadKneeVolume
        from medplugin.transforms.knee.classification import cam_to_input_grid

        samples = list(iter_samples(engine))
        preds = [int(torch.as_tensor(o[self.pred_key]).reshape(-1).argmax()) for _, o in samples]
        wanted = []
        for i, (b, _) in enumerate(samples):
            if b.get("error"):
                continue
            if self.only_misclassified and _label(b) in (None, preds[i]):
                continue
            wanted.append(i)
        if not wanted:
            if self.inferer._last is not None:
                self.inferer.cams()  # free the graph
            return
        maps = self.inferer.cams(preds).cpu()
        # under several processes each rank writes the maps of its own volumes (TensorBoard: rank 0's only)
        loader = LoadKneeVolume(channel_first=False, npy_spacing=self.npy_spacing)
        for i in wanted:
            b = samples[i][0]
            path = b.get("path") or ""
            name = safe_name(b.get("name") or Path(path).name.split(".")[0] or f"item{len(self.saved)}")
            suffix = f"_pred-{self.class_names[preds[i]]}"
            if self.only_misclassified:
                suffix = f"_true-{self.class_names[_label(b)]}{suffix}"
            try:
                original = loader(path)
                cam = cam_to_input_grid(maps[i, 0], b["geometry"])
                save_cam_nifti(self.dir / f"{name}{suffix}_cam.nii.gz", cam, dict(original.meta))
                rgb, slices = cam_montage(original.as_tensor(), cam, self.max_slices)
                save_png(self.dir / f"{name}{suffix}_montage.png", rgb)
            except Exception as e:  # the maps are a by-product: log and go on
                logger.warning("no CAM for %s: %s", path, e)
                continue
            if self.writer is not None:
                self.writer.add_image(f"gradcam_montage/{name}{suffix}", rgb, 0, dataformats="HWC")
            self.saved.append({"name": name, "path": path, "slices": slices})
        if self.writer is not None:
            self.writer.flush()


class TensorBoardVolumeCAMHandler:
    """Every ``interval`` epochs, write Grad-CAM montages of the same validation volumes to TensorBoard.

    The volumes are prepared once (the first ``max_images`` of ``data`` through ``transform``); each montage
    shows the ``max_slices`` network-input slices where the map (of the true class when known) is strongest.
    The network's train/eval mode is restored.

    Args:
        summary_writer: a ``SummaryWriter``.
        network: the network being trained.
        layer: Grad-CAM layer name.
        data: datalist entries (``image`` path and ``label``).
        transform: the deterministic preprocessing.
        class_names: names for the tags.
        device: where to run.
        max_images: how many volumes.
        interval: epochs between writes.
        max_slices: slices per montage.
        tag: tag prefix.
    """

    def __init__(self, summary_writer, network: torch.nn.Module, layer: str, data: Sequence[dict],
                 transform: Callable, class_names: Sequence[str], device: str | torch.device = "cpu",
                 max_images: int = 4, interval: int = 1, max_slices: int = 8, tag: str = "gradcam") -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images!r}.")
        self.writer = summary_writer
        self.network = network
        self.layer = layer
        self.data = list(data)[:max_images]
        self.transform = transform
        self.class_names = list(class_names)
        self.device = torch.device(device)
        self.interval = int(interval)
        self.max_slices = int(max_slices)
        self.tag = tag
        self._items: list | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        if not self.data or not is_main_process():
            return
        if self._items is None:
            self._items = [self.transform(dict(d)) for d in self.data]
        net = self.network.module if hasattr(self.network, "module") else self.network
        cam = GradCAM(net, self.layer)
        for i, item in enumerate(self._items):
            x = torch.as_tensor(item["image"], dtype=torch.float32)[None].to(self.device)
            label = self.data[i].get("label")
            target = int(label) if isinstance(label, (int, np.integer)) else None
            maps, logits = cam(x, class_idx=target)
            rgb, _ = cam_montage(x[0, 0].cpu(), maps[0, 0].cpu(), self.max_slices)
            true = self.class_names[target] if target is not None else "?"
            tag = f"{self.tag}/{i:02d}_true-{true}"
            self.writer.add_image(tag, rgb, engine.state.epoch, dataformats="HWC")
            self.writer.add_text(f"{tag}/prediction", self.class_names[int(logits.argmax(1)[0])], engine.state.epoch)
        self.writer.flush()


class TensorBoardConfusionMatrix:
    """Write the confusion matrix of each evaluator run to TensorBoard as an image (rows true, columns predicted).

    Args:
        summary_writer: a ``SummaryWriter``.
        class_names: class names in output order.
        step_engine: the engine whose epoch is the step (e.g. the trainer); default the evaluator's epoch.
        tag: image tag.
        pred_key: output key of the class probabilities.
        label_key: batch key of the label.
    """

    def __init__(self, summary_writer, class_names: Sequence[str], step_engine: Engine | None = None,
                 tag: str = "confusion_matrix", pred_key: str = "pred", label_key: str = "label") -> None:
        self.writer = summary_writer
        self.class_names = list(class_names)
        self.step_engine = step_engine
        self.tag, self.pred_key, self.label_key = tag, pred_key, label_key
        self.cm = np.zeros((len(self.class_names),) * 2, np.int64)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.cm[:] = 0

    def _collect(self, engine: Engine) -> None:
        for b, o in iter_samples(engine):
            if b.get("error") or self.label_key not in b:
                continue
            self.cm[_label(b), int(torch.as_tensor(o[self.pred_key]).reshape(-1).argmax())] += 1

    def _write(self, engine: Engine) -> None:
        from monai.utils import evenly_divisible_all_gather

        cm = evenly_divisible_all_gather(torch.as_tensor(self.cm)[None], concat=True).sum(0).numpy()
        if not is_main_process():
            return
        from matplotlib.figure import Figure  # no pyplot: no global backend state

        step = (self.step_engine or engine).state.epoch
        fig = Figure(figsize=(1.2 + 0.9 * len(self.class_names), 1.0 + 0.8 * len(self.class_names)))
        ax = fig.subplots()
        ax.imshow(cm, cmap="Blues")
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, str(v), ha="center", va="center", color="black")
        ax.set_xticks(range(len(self.class_names)), self.class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(self.class_names)), self.class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.tight_layout()
        self.writer.add_figure(self.tag, fig, step)  # closes the figure
        self.writer.add_text(f"{self.tag}/counts", str(cm.tolist()), step)
        self.writer.flush()
