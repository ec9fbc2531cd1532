"""Where a bundle's trained model looks: the Grad-CAM its deployment config computes (``inference.yaml`` with the
same overlays: its network, preprocessing and ``GradCAMInferer`` at ``cam_layer``), for scoring against the
lesions the synthetic generators planted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from medplugin.metrics.localization import peak_in_mask
from tests.bundles._runner import bundle_dir, config_files


def bundle_cams(name: str, overlays: Sequence[Path], ckpt_dir: Path, images: Sequence[Path],
                classes: Sequence[int], batch_size: int = 16) -> tuple[torch.Tensor, str]:
    """Maps ``(N, 1, S, S)`` in [0, 1] on the network input's grid (``S`` = ``image_size``) of ``classes[k]`` for
    ``images[k]``, computed as the bundle's inference does; and the ``cam_layer`` used."""
    parser = ConfigParser()
    parser.read_config(config_files(name, "inference.yaml", *overlays))
    parser.update({"bundle_root": str(bundle_dir(name)), "ckpt_dir": str(ckpt_dir), "device": "$torch.device('cpu')",
                   "output_dir": str(ckpt_dir)})  # output_dir is not written to: only the network runs here
    net = parser.get_parsed_content("network_def")
    from medplugin.networks.pretrained import read_state_dict

    net.load_state_dict(read_state_dict(Path(ckpt_dir) / "model.pt"), strict=True)
    net.eval()
    pre = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    maps = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([pre({"image": str(p)})["image"] for p in images[i:i + batch_size]])
        with torch.no_grad():  # as inside the bundle's evaluator
            inferer(x, net)
            maps.append(inferer.cams(class_idx=list(classes[i:i + batch_size])))
    return torch.cat(maps), parser.get_parsed_content("cam_layer")


def peak_hits(maps: Sequence[torch.Tensor], masks: Sequence[np.ndarray], tolerance_at_224: float = 15.0) -> list[bool]:
    """Whether each map's peak lies inside its lesion mask (``peak_in_mask``), or within the house's pointing-game
    tolerance: ``tolerance_at_224`` pixels of a 224-pixel image, scaled to the mask's height. A map on the network
    input's grid is first resized to the mask's (bilinear, pixel centres: the inverse of the preprocessing's
    resize), so a scan is scored in its own pixels."""
    hits = []
    for cam, mask in zip(maps, masks):
        cam = torch.as_tensor(cam).reshape(1, 1, *cam.shape[-2:]).float()
        if tuple(cam.shape[-2:]) != mask.shape:
            cam = F.interpolate(cam, size=mask.shape, mode="bilinear", align_corners=False)
        hits.append(peak_in_mask(cam[0, 0], mask, tolerance=tolerance_at_224 / 224 * mask.shape[0]))
    return hits


def centre_guess_hits(masks: Sequence[np.ndarray], tolerance_at_224: float = 15.0) -> list[bool]:
    """:func:`peak_hits` of a trivial guess, the image's centre (the baseline scored beside a model's maps)."""
    guesses = []
    for mask in masks:
        g = torch.zeros(mask.shape)
        g[mask.shape[0] // 2, mask.shape[1] // 2] = 1.0
        guesses.append(g)
    return peak_hits(guesses, masks, tolerance_at_224)


def fundus_lesion_masks(images: Sequence[Path], lesions: Sequence[Sequence[Sequence[float]]],
                        size: int) -> list[np.ndarray]:
    """The planted lesions (``[row, col, radius]`` of each, as ``make_eyepacs_demo`` records them) as bool masks
    on the network input's ``size x size`` grid: through the same field-of-view crop and resize as the bundle's
    preprocessing (``FundusFOVCrop``); a lesion is at least one pixel wide."""
    from medplugin.transforms.crop.array import FundusFOVCrop
    from medplugin.transforms.io import LoadImage2dd
    from medplugin.transforms.utils import as_rgb

    crop, load = FundusFOVCrop(size), LoadImage2dd(["image"], channels=3)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = []
    for path, planted in zip(images, lesions):
        top, left, side = crop.crop_square(*crop.find_fov(as_rgb(load({"image": str(path)})["image"])))
        k = size / side
        mask = np.zeros((size, size), bool)
        for row, col, radius in planted:
            r, c = (row - top + 0.5) * k - 0.5, (col - left + 0.5) * k - 0.5
            mask |= (yy - r) ** 2 + (xx - c) ** 2 <= max(radius * k, 0.5) ** 2
        masks.append(mask)
    return masks
