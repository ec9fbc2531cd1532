"""MONAI Label: segmentation answers for DICOM sources as a DICOM SEG. Runs inside the MONAI Label environment.

MONAI Label 0.8.5's bundle infer task writes a segmentation answer in its input's format with ITK: for a ``.dcm``
study of a folder datastore a plain DICOM image whose pixels are the mask, for a DICOMweb series (which MONAI
Label converts to NIfTI before the bundle sees it) a NIfTI. :class:`DicomSegInferTask` answers for a DICOM source
with a binary DICOM SEG instead, written by medplugin's own writer
(:func:`medplugin.io.dicom_results.write_segmentation`, the one the bundles' ``DicomSegmentationWriter`` uses): on
the source radiograph (one frame) or series (one frame per slice), every frame referencing its source instance, in
the source's study and patient, its segments as the bundle config's ``segments`` describe them, the model named by
the bundle's folder and version. Its frames are the mask MONAI Label would have written (the same array on the
same grid: a radiograph's ``(x, y)`` mask transposed to ``(rows, columns)``, a volume put from its affine onto the
series' slices), so the SEG re-assembles to it.

Which DICOM files a request is on: the study file itself in a folder datastore; for a DICOMweb datastore the
series' instances MONAI Label downloaded into its cache (``<cache>/<hash>/<Series Instance UID>/*.dcm``, beside the
NIfTI it made), which :class:`DicomSegAppMixin` names in the request (MONAI Label's request carries only the NIfTI).

The stock answer stays where a SEG is not what is asked for: a non-DICOM source; a request naming another
``result_extension`` (e.g. ``.nii.gz``); MONAI Label's own ``output=dicom_seg`` route (``label_info`` given: it
converts the NIfTI answer with dcmqi itself); a request that stores the answer as the study's label
(``save_label``, batch inference: the datastore keeps labels in the format its training reads); a bundle with
``dicom_output: false`` or no ``segments``. A source the SEG cannot be made on (no Study Instance UID, a mask off
the series' grid) gets the stock answer too, with the reason in the server log.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

from medplugin.handlers.dicom import bundle_model_info, dicom_output_mode, dicom_sources

logger = logging.getLogger(__name__)

# request key naming the folder of a DICOMweb series' downloaded instances (set by DicomSegAppMixin.infer)
SERIES_KEY = "medplugin_dicom_series"


def request_sources(data: dict) -> list[str] | None:
    """The DICOM files an infer request is on: the series folder :class:`DicomSegAppMixin` named, else the image
    path itself (a ``.dcm`` file, or a series folder); ``None`` for a non-DICOM source (a NIfTI, a PNG)."""
    for path in (data.get(SERIES_KEY), data.get("image_path")):
        if isinstance(path, str) and path and os.path.exists(path):
            sources = dicom_sources(path)
            if sources:
                return sources
    return None


def answer_mask(data: dict, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The mask MONAI Label's ``Writer`` writes for ``data[key]`` and its affine (the key's meta dict, which MONAI
    Label's ``Restored`` sets to the image's ``original_affine``, else the tensor's own)."""
    pred = data[key]
    array = pred.array if isinstance(pred, MetaTensor) else pred
    array = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    meta = data.get(f"{key}_meta_dict")
    affine = meta.get("affine") if meta else None
    if affine is None and isinstance(pred, MetaTensor):
        affine = pred.affine
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    return array, None if affine is None else np.asarray(affine, dtype=np.float64)


def write_answer_seg(sources: list[str], mask: np.ndarray, affine: np.ndarray | None, segments, model,
                     output_dir: str | os.PathLike) -> Path:
    """Write the SEG of an answer's mask (as :func:`answer_mask` gives it) on its DICOM ``sources``.

    One source: the mask in ITK's ``(x, y)`` order (what MONAI Label writes; any singleton axes dropped) is
    transposed to the image's ``(rows, columns)``. A series: the 3-D mask with its voxel-to-RAS ``affine`` is put
    onto the series' slices exactly (:func:`medplugin.io.dicom_results.to_series_grid`; a grid that is not the
    series' own is refused).

    Raises:
        ValueError: a mask that does not fit (wrong dimensions, no affine for a series), with its shape.
    """
    from medplugin.io.dicom_results import write_segmentation

    if len(sources) == 1:
        plane = np.squeeze(mask)
        if plane.ndim != 2:
            raise ValueError(f"a one-image source needs a 2-D mask, got shape {mask.shape}.")
        return write_segmentation(sources[0], plane.T, segments, model, output_dir)
    volume = mask[0] if mask.ndim == 4 and mask.shape[0] == 1 else mask
    if volume.ndim != 3 or affine is None or affine.shape != (4, 4):
        raise ValueError(f"a series needs a 3-D mask with its 4x4 affine, got shape {mask.shape} and affine "
                         f"{None if affine is None else affine.shape}.")
    return write_segmentation(sources, volume, segments, model, output_dir, mask_affine=affine)


class DicomSegInferTask(BundleInferTask):
    """The stock bundle infer task; a segmentation answer for a DICOM source is a binary DICOM SEG (see the
    module for when the stock answer stays)."""

    def _seg_wanted(self, data: dict) -> str:
        """Why the stock answer stays for ``data`` (empty: a SEG is wanted)."""
        if self.type != InferType.SEGMENTATION:
            return "not a segmentation"
        ext = str(data.get("result_extension") or "")
        if ext and ext.lower() != ".dcm":
            return f"result_extension {ext} asked for"
        if data.get("label_info") is not None:
            return "MONAI Label's own dicom_seg output asked for"
        if str(data.get("save_label", "false")).lower() in ("true", "1", "yes"):
            return "the answer is saved as the study's label"
        if dicom_output_mode(self.bundle_config.get("dicom_output", "auto")) is False:
            return "the bundle's dicom_output is false"
        if not self.bundle_config.get("segments"):
            return "the bundle config has no segments"
        return ""

    def writer(self, data, extension=None, dtype=None):
        sources = request_sources(data)
        why_not = "not a DICOM source" if sources is None else self._seg_wanted(data)
        if extension not in (None, ".dcm"):
            why_not = f"extension {extension} asked for"
        if why_not:
            if sources is not None:
                logger.info("answering %s with MONAI Label's own mask file: %s", data.get("image_path"), why_not)
            return super().writer(data, extension, dtype)
        try:
            mask, affine = answer_mask(data, self.output_label_key)
            model = bundle_model_info(self.bundle_path, os.path.join(self.bundle_path, "models"))
            segments = self.bundle_config.get_parsed_content("segments")
            # in the temporary folder, as MONAI Label's own answer file: its infer endpoint removes it once sent
            path = write_answer_seg(sources, mask, affine, segments, model, tempfile.gettempdir())
        except Exception as e:  # noqa: BLE001 - any source MONAI Label could answer for keeps its stock answer
            logger.warning("no DICOM SEG for %s (%s); answering with MONAI Label's own mask file", sources[0], e)
            return super().writer(data, extension, dtype)
        logger.info("answering with DICOM SEG %s on %d source image(s)", path.name, len(sources))
        return str(path), data.get(self.output_json_key, {})


class DicomSegAppMixin:
    """Serves every segmentation bundle of a MONAI Label bundle app with :class:`DicomSegInferTask`, and names a
    DICOMweb request's downloaded series in the request. Put it before the stock app class among the app class's
    bases."""

    def init_infers(self):
        infers = dict(super().init_infers() or {})
        for name, task in infers.items():
            if type(task) is BundleInferTask and task.type == InferType.SEGMENTATION:
                infers[name] = DicomSegInferTask(task.bundle_path, self.conf)
                logger.info("+++ %s answers for DICOM sources with a DICOM SEG", name)
        return infers

    def infer(self, request, datastore=None):
        store = datastore if datastore else self.datastore()
        image = request.get("image")
        if isinstance(store, DICOMWebDatastore) and isinstance(image, str) and not os.path.exists(image):
            # where DICOMWebDatastore.get_image_uri downloads the series (MONAI Label offers no public accessor)
            folder = os.path.realpath(os.path.join(store._datastore.image_path(), image))
            request = {**request, SERIES_KEY: folder}
        return super().infer(request, datastore)
