"""Reading weight files safely and mapping torchvision-layout weights onto our networks."""

from __future__ import annotations

import logging
import os
import json
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from medplugin.errors import BadInputError

__all__ = ["read_state_dict", "load_matching", "adapt_input_channels", "load_trained_model"]

logger = logging.getLogger(__name__)


def read_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` with ``torch.load(..., weights_only=True)``.

    A file that would need to run code to be unpickled is refused. Nested checkpoints that keep the weights
    under ``"state_dict"``, ``"model"`` or ``"network"`` are unwrapped, and a ``"module."`` prefix left by
    ``DataParallel``/``DistributedDataParallel`` is removed.

    Args:
        path: the ``.pt``/``.pth`` file.
        map_location: where to load the tensors.

    Raises:
        BadInputError: missing, empty, corrupt or unsafe file, or one that holds no tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(path, "weights file not found")
    if os.path.getsize(path) == 0:
        raise BadInputError(path, "weights file is empty (0 bytes)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise BadInputError(
            path,
            "refused to load: the file holds pickled Python objects that could run code, not plain weights "
            f"(torch.load weights_only=True said: {str(e).splitlines()[0]})",
        ) from e
    except Exception as e:  # zip/format errors from truncated or foreign files
        raise BadInputError(path, f"not a readable PyTorch weights file ({type(e).__name__}: {e})") from e
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "network", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(path, f"holds no state dict of tensors (found {type(obj).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-convolution weight ``(out, c, *k)`` to ``in_channels`` input channels.

    Going to one channel sums the kernels over the RGB channels (a gray image replicated to RGB gives the same
    response); going from RGB to RGB plus extra channels keeps the RGB kernels and starts the extra ones at zero;
    otherwise going to more channels repeats the mean kernel, scaled to keep the response.
    """
    c = weight.shape[1]
    if c == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if c == 3 and in_channels > 3:  # RGB + extra maps (fundus candidates): RGB kernels kept, extras start at 0
        extra = weight.new_zeros((weight.shape[0], in_channels - 3, *weight.shape[2:]))
        return torch.cat([weight, extra], dim=1)
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, *([1] * (weight.dim() - 2))) * (c / in_channels)


def load_matching(
    network: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    key_map: Callable[[str], str | None] | None = None,
    first_conv: str | None = None,
    skip_prefixes: tuple[str, ...] = (),
) -> dict[str, list[str]]:
    """Copy the tensors of ``state_dict`` into ``network`` where names (after ``key_map``) and shapes match.

    Args:
        network: the module to initialise (changed in place).
        state_dict: source weights, e.g. torchvision's ImageNet weights.
        key_map: turns a source key into the network's key, or ``None`` to drop it.
        first_conv: the network key of the first convolution weight, adapted to the network's input channels.
        skip_prefixes: network keys starting with these are left as initialised (e.g. a new head).

    Returns:
        ``{"loaded": [...], "missing": [...], "unexpected": [...]}`` where ``missing`` are network keys that
        received nothing and ``unexpected`` source keys that went nowhere (or had another shape).

    Raises:
        ValueError: when not a single tensor matched, which means the file is for another architecture.
    """
    own = network.state_dict()
    loaded, unexpected = [], []
    new_state = {}
    for src_key, value in state_dict.items():
        key = key_map(src_key) if key_map else src_key
        if key is None or key not in own or (skip_prefixes and key.startswith(skip_prefixes)):
            unexpected.append(src_key)
            continue
        if first_conv is not None and key == first_conv:
            value = adapt_input_channels(value, own[key].shape[1])
        if tuple(value.shape) != tuple(own[key].shape):
            unexpected.append(src_key)
            continue
        new_state[key] = value
        loaded.append(key)
    if not loaded:
        raise ValueError(
            f"no tensor of the weights file matched {type(network).__name__}: is it for another architecture? "
            f"(first keys: {list(state_dict)[:3]})"
        )
    network.load_state_dict(new_state, strict=False)
    missing = [k for k in own if k not in new_state and not k.endswith("num_batches_tracked")]
    logger.info(
        "loaded %d pretrained tensors into %s; %d left as initialised, %d unused",
        len(loaded), type(network).__name__, len(missing), len(unexpected),
    )
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected}


def load_trained_model(
    model_path: str | os.PathLike,
    from_meta: Callable[[dict], torch.nn.Module],
    what: str,
    trained_by: str,
    errors: tuple[type[Exception], ...] = (ValueError, TypeError),
) -> tuple[torch.nn.Module, dict]:
    """Rebuild a bundle's trained network from ``model.pt`` and the ``model.json`` beside it.

    Bundles whose model another bundle uses (the lung crop, the ACL crop) save the weights with a record of
    how to rebuild the network (``medplugin.handlers.BestModelSaver``). The weights are read with
    ``weights_only=True`` (:func:`read_state_dict`) and loaded strictly.

    Args:
        model_path: the ``model.pt`` file.
        from_meta: builds the network from the parsed ``model.json`` (and checks it); raises one of ``errors``.
        what: what the network does (``"lung segmentation"``), in error messages.
        trained_by: the bundle that trains it, named in the error when the file is missing.
        errors: exceptions of ``from_meta`` that mean ``model.json`` does not describe a usable network.

    Returns:
        ``(network on the CPU, in eval mode; the model.json dict)``.

    Raises:
        BadInputError: naming the file: ``model.pt`` or ``model.json`` missing, ``model.json`` unusable, or
            weights that do not fit the network it describes.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise BadInputError(model_path, f"no trained {what} model here: train {trained_by} first")
    meta_path = model_path.with_suffix(".json")
    if not meta_path.is_file():
        raise BadInputError(meta_path, "model.json is missing beside model.pt (it records how to rebuild the network)")
    try:
        meta = json.loads(meta_path.read_text())
        network = from_meta(meta)
    except json.JSONDecodeError as e:
        raise BadInputError(meta_path, f"not valid JSON ({e.msg})") from e
    except errors as e:
        raise BadInputError(meta_path, f"cannot rebuild the {what} network ({e})") from e
    state = read_state_dict(model_path)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BadInputError(model_path, f"weights do not fit the network model.json describes ({str(e).splitlines()[0]})") from e
    return network.eval(), meta

