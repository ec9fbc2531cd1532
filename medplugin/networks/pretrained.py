"""Reading weight files safely and mapping published weight layouts onto our networks.

This module is the one place where published key layouts are mapped: :func:`load_matching` first brings every
key to torchvision's current names (:func:`torchvision_key`: the old DenseNet names of torchvision's
``densenet121-a639ec97.pth``), then applies the network's own key map (``features.*`` of torchvision to MONAI's
DenseNet, ``backbone.*`` of MRNet, ...), and adapts the first convolution to the network's input channels.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from medplugin.errors import BadInputError

__all__ = [
    "read_state_dict",
    "read_pickled_module",
    "torchvision_key",
    "load_matching",
    "adapt_input_channels",
    "load_trained_model",
]

logger = logging.getLogger(__name__)

# torchvision's DenseNet files (densenet121-a639ec97.pth, 2017) name some layers "norm.1" instead of "norm1";
# torchvision renames them with this pattern when it loads them (torchvision.models.densenet._load_state_dict)
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def torchvision_key(key: str) -> str:
    """The current torchvision name of ``key`` from any published torchvision layout.

    ``features.denseblock1.denselayer1.norm.1.weight`` (DenseNet files published before torchvision 0.3)
    becomes ``features.denseblock1.denselayer1.norm1.weight``; every other key is returned unchanged.
    """
    m = _DENSENET_OLD_KEY.match(key)
    return m.group(1) + m.group(2) if m else key


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

    Source keys are first brought to torchvision's current names (:func:`torchvision_key`), so every published
    torchvision layout goes through the same ``key_map``.

    Args:
        network: the module to initialise (changed in place).
        state_dict: source weights, e.g. torchvision's ImageNet weights.
        key_map: turns a (current torchvision) source key into the network's key, or ``None`` to drop it.
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
        key = torchvision_key(src_key)
        key = key_map(key) if key_map else key
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
        raise BadInputError(
            model_path, f"weights do not fit the network model.json describes ({str(e).splitlines()[0]})"
        ) from e
    return network.eval(), meta



# ---- whole pickled models (e.g. torchxrayvision's releases), read without running their code -------------------

class _PickledModule:
    """Stands in for an allow-listed ``nn.Module`` class while a pickled model is read: it keeps the object's
    attribute dictionary (``_parameters``, ``_buffers``, ``_modules``, ...) and runs none of the class's code."""

    def __setstate__(self, state) -> None:
        self.state = state if isinstance(state, dict) else {}


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickler of torch's pre-1.6 file format (``_use_new_zipfile_serialization=False``) that resolves only
    allow-listed names: the module classes become :class:`_PickledModule`, tensors are rebuilt by torch's own
    rebuild functions (the ones ``torch.load(weights_only=True)`` allows) on storages filled afterwards, and the
    class source code the format keeps beside each module class is ignored, never run."""

    _SAFE = {
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set,
        "__builtin__.set": set,
        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    }

    def __init__(self, f, modules: frozenset[str], storages: dict) -> None:
        super().__init__(f)
        self.modules = modules
        self.storages = storages

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full in self.modules:
            return _PickledModule
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if full in self._SAFE:
            return self._SAFE[full]
        raise pickle.UnpicklingError(f"global {full} is not allowed")

    def persistent_load(self, pid):
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":  # (module, class, source file, source): the class, with its source kept for a check
            if len(pid) < 2 or pid[1] is not _PickledModule:
                raise pickle.UnpicklingError("a module persistent id without an allowed class")
            return _PickledModule
        if kind != "storage" or len(pid) != 6 or not isinstance(pid[1], _StorageType) or pid[5] is not None:
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        dtype, key, numel = pid[1].dtype, str(pid[2]), int(pid[4])
        if key not in self.storages:
            raw = torch.UntypedStorage(numel * torch._utils._element_size(dtype))
            self.storages[key] = torch.storage.TypedStorage(wrap_storage=raw, dtype=dtype, _internal=True)
        return self.storages[key]


def _read_legacy(path: str, modules: frozenset[str]):
    storages: dict[str, torch.storage.TypedStorage] = {}
    with open(path, "rb") as f:
        header = [_LegacyUnpickler(f, frozenset(), storages).load() for _ in range(3)]
        if header[0] != _LEGACY_MAGIC:
            raise pickle.UnpicklingError("not a PyTorch file (bad magic number)")
        if not isinstance(header[2], dict) or not header[2].get("little_endian", True):
            raise pickle.UnpicklingError("big-endian files are not supported")
        obj = _LegacyUnpickler(f, modules, storages).load()
        for key in _LegacyUnpickler(f, frozenset(), storages).load():
            typed = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            size = numel * torch._utils._element_size(typed.dtype)
            if size != typed._untyped_storage.nbytes():
                raise pickle.UnpicklingError(f"storage {key} holds {size} bytes, its tensors need "
                                             f"{typed._untyped_storage.nbytes()}")
            data = f.read(size)
            if len(data) != size:
                raise pickle.UnpicklingError("the file ends inside a storage (truncated?)")
            typed._untyped_storage.copy_(torch.UntypedStorage.from_buffer(data, dtype=torch.uint8))
    return obj


def _module_tensors(obj: _PickledModule, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:  # a module listed inside itself: not a model torch could have saved
        raise pickle.UnpicklingError("a module contains itself")
    seen.add(id(obj))
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or set()
    for k, v in (state.get("_parameters") or {}).items():
        if isinstance(v, torch.Tensor):
            out[prefix + k] = v.detach()
    for k, v in (state.get("_buffers") or {}).items():
        if isinstance(v, torch.Tensor) and k not in skip:
            out[prefix + k] = v
    for k, v in (state.get("_modules") or {}).items():
        if isinstance(v, _PickledModule):
            _module_tensors(v, f"{prefix}{k}.", out, seen)


def read_pickled_module(path: str | os.PathLike, module_classes: Iterable[str]) -> dict[str, torch.Tensor]:
    """The state dict of a whole pickled ``nn.Module`` (``torch.save(model)``), read without running its code.

    Publishers such as torchxrayvision release whole pickled models rather than state dicts. Loading those
    normally imports and runs the classes named in the file. Here every name of ``module_classes`` (full
    dotted names, e.g. ``"torchxrayvision.models.DenseNet"``, ``"torch.nn.modules.conv.Conv2d"``) is read as
    an inert stand-in that only keeps the object's attributes, and the parameters and persistent buffers are
    collected from them, as ``model.state_dict()`` would give them. Any other name in the file is refused.
    Both of torch's formats are read: the zip format with ``torch.load(weights_only=True)`` and an explicit
    ``torch.serialization.safe_globals`` allow-list, and the pre-1.6 format (files saved before PyTorch 1.6
    keep each module class's source code, which ``weights_only`` rejects) with an allow-list unpickler that
    resolves the same names. The package whose classes are named need not be installed.

    Args:
        path: the file.
        module_classes: full names of the module classes the file may hold.

    Returns:
        ``{name: tensor}`` as ``state_dict()`` of the pickled model; a file holding a plain state dict is
        returned as :func:`read_state_dict` returns it.

    Raises:
        BadInputError: missing, empty or corrupt file, a name outside ``module_classes`` and torch's own
            tensor-rebuilding functions, or a file that holds no module.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(path, "weights file not found")
    if os.path.getsize(path) == 0:
        raise BadInputError(path, "weights file is empty (0 bytes)")
    modules = frozenset(module_classes)
    try:
        if zipfile.is_zipfile(path):
            with torch.serialization.safe_globals([(_PickledModule, name) for name in sorted(modules)]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            obj = _read_legacy(path, modules)
    except pickle.UnpicklingError as e:
        reason = next((line for line in str(e).splitlines() if "GLOBAL" in line or "global" in line),
                      str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise BadInputError(path, f"refused to load: the file holds more than the allowed model classes "
                                  f"({reason.strip()})") from e
    except (RuntimeError, EOFError, OSError, ValueError, struct.error, KeyError, TypeError, AttributeError,
            IndexError) as e:
        raise BadInputError(path, f"not a readable PyTorch file ({type(e).__name__}: {e})") from e
    if isinstance(obj, Mapping):
        return read_state_dict(path)
    if not isinstance(obj, _PickledModule):
        raise BadInputError(path, f"holds no pickled model (found {type(obj).__name__})")
    state: dict[str, torch.Tensor] = {}
    try:
        _module_tensors(obj, "", state, set())
    except pickle.UnpicklingError as e:
        raise BadInputError(path, f"not a readable pickled model ({e})") from e
    if not state:
        raise BadInputError(path, "the pickled model holds no tensors")
    return state
