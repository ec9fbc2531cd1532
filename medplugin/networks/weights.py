"""Starting weights: torchvision's ImageNet files and torchxrayvision's chest X-ray models, in one registry.

Each starting point keeps together what must not drift apart (as torchxrayvision keeps them): the file and
where it is cached, the input convention its weights expect (intensity normalisation, size, channels) and,
for a labelled model, the order of its outputs. ``pretrained`` of the classification bundles takes:

- ``imagenet``: torchvision's ImageNet weights for the architecture, through torchvision's weights API
  (``torchvision.models.get_weight(...).get_state_dict``), which downloads the file once into torch's cache
  (``$TORCH_HOME/hub/checkpoints/``) and reads it from there afterwards;
- ``torchxrayvision:<name>`` (``densenet121-res224-nih``, ``densenet121-res224-all``): torchxrayvision's
  DenseNet-121 trained on chest X-rays (Cohen et al. 2022, "TorchXRayVision: A library of chest X-ray datasets
  and models", MIDL), read from torchxrayvision's own cache folder (``~/.torchxrayvision/models_data/``);
- ``none``: random initialisation, the explicit way to train from scratch;
- a path: a local state dict in the architecture's layout.

A file that is neither cached nor downloadable stops the run with one message naming the architecture, the
file, the cache folder and the command that fetches it on a connected machine (``medplugin weights fetch``).
Set ``MEDPLUGIN_OFFLINE=1`` to fail at once instead of first asking the server (10 s at most).
Nothing falls back to random weights silently.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.utils import optional_import

from medplugin.errors import BadInputError
from medplugin.networks.pretrained import read_pickled_module, read_state_dict

__all__ = [
    "TORCHVISION_WEIGHTS",
    "XRV_WEIGHTS",
    "XRVWeights",
    "WeightsFile",
    "StartingWeights",
    "WeightsUnavailableError",
    "torch_cache_dir",
    "xrv_cache_dir",
    "weights_file",
    "known_weights",
    "fetch",
    "resolve_pretrained",
    "refuse_frozen_from_scratch",
    "map_labels",
    "copy_labelled_head",
    "XRV_CRITERION",
    "xrv_operating_points",
    "recorded_normalization",
    "continue_or_start",
]

logger = logging.getLogger(__name__)

TORCHVISION_WEIGHTS: dict[str, str] = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "densenet121": "DenseNet121_Weights.IMAGENET1K_V1",
    "inception_v3": "Inception_V3_Weights.IMAGENET1K_V1",
    "alexnet": "AlexNet_Weights.IMAGENET1K_V1",
    "vgg16": "VGG16_Weights.IMAGENET1K_V1",
}
"""Architecture -> torchvision weights enum. ``IMAGENET1K_V1`` everywhere: the original ImageNet weights that the
rebuilt papers fine-tuned (ResNet-50's ``DEFAULT`` is torchvision's 2021 recipe, ``IMAGENET1K_V2``)."""

_XRV_LABELS = ("Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
               "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia")
_XRV_RELEASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"

# the model classes torchxrayvision's DenseNet files pickle: read as inert stand-ins (never imported or run)
XRV_MODULE_CLASSES = tuple(f"torchxrayvision.models.{c}" for c in ("DenseNet", "_DenseBlock", "_DenseLayer",
                                                                   "_Transition")) + tuple(
    f"torch.nn.modules.{c}" for c in ("container.Sequential", "conv.Conv2d", "batchnorm.BatchNorm2d",
                                      "activation.ReLU", "pooling.MaxPool2d", "pooling.AvgPool2d", "linear.Linear"))


@dataclass(frozen=True)
class XRVWeights:
    """A torchxrayvision DenseNet-121 (``torchxrayvision.models.model_urls[name]``) and its input convention.

    Inputs are one channel, ``image_size`` pixels, intensities in [-1024, 1024] (torchxrayvision's
    ``normalize``: ``(2 * x / maxval - 1) * 1024``), which on the bundles' [0, 1] scale is
    ``(x - 0.5) / (1 / 2048)``. ``labels`` is the order of its 18 outputs (``""``: an output it was not trained
    for); ``op_threshs`` the probability of each output at its operating point (NaN where untrained).
    """

    name: str
    file: str
    labels: tuple[str, ...]
    op_threshs: tuple[float, ...]
    image_size: int = 224
    arch: str = "densenet121"
    mean: float = 0.5
    std: float = 1.0 / 2048

    @property
    def url(self) -> str:
        return _XRV_RELEASE + self.file

    def normalization(self, in_channels: int = 1) -> tuple[list[float], list[float]]:
        """Mean and std on the [0, 1] scale that give torchxrayvision's [-1024, 1024] range."""
        return [self.mean] * int(in_channels), [self.std] * int(in_channels)


_NAN = float("nan")
XRV_WEIGHTS: dict[str, XRVWeights] = {
    "densenet121-res224-nih": XRVWeights(
        "densenet121-res224-nih", "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _XRV_LABELS + ("", "", "", ""),
        (0.039117552, 0.0034529066, 0.11396341, 0.0057298196, 0.00045666535, 0.0018880932, 0.012037827,
         0.038744126, 0.0037213727, 0.014730946, 0.016149804, 0.054241467, 0.037198864, 0.0004403434,
         _NAN, _NAN, _NAN, _NAN)),
    "densenet121-res224-all": XRVWeights(
        "densenet121-res224-all",
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _XRV_LABELS + ("Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"),
        (0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358, 0.010060724, 0.103246614,
         0.056810737, 0.026791653, 0.050318155, 0.023985857, 0.01939503, 0.042889766, 0.053369623, 0.035975814,
         0.20204692, 0.05015312)),
}
"""torchxrayvision 1.5.7's ``model_urls`` entries offered as starting points (a test checks them against the
installed package)."""

XRV_PREFIX = "torchxrayvision:"


class WeightsUnavailableError(BadInputError):
    """A starting-weights file that is neither cached nor downloadable here (``"<file>: <what to do>"``)."""


@dataclass(frozen=True)
class WeightsFile:
    """One published weights file: what ``pretrained`` value names it, the file, its cache folder and size."""

    pretrained: str       # e.g. "imagenet" or "torchxrayvision:densenet121-res224-nih"
    arch: str             # the architecture it initialises
    fetch_name: str       # what `medplugin weights fetch` takes
    path: Path            # where it is (or would be) cached
    url: str
    size_mb: float | None
    weights: str | None = None   # torchvision's enum name

    @property
    def cached(self) -> bool:
        return self.path.is_file()


@dataclass
class StartingWeights:
    """Weights read for a network: the state dict, where it came from, and the labels of its outputs (if any)."""

    state: dict[str, torch.Tensor]
    record: dict
    labels: tuple[str, ...] | None = None


def torch_cache_dir() -> Path:
    """torch's download cache, ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()`` + ``/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def xrv_cache_dir() -> Path:
    """torchxrayvision's download cache, ``~/.torchxrayvision/models_data``.

    The same folder as ``torchxrayvision.utils.get_cache_dir``.
    """
    return Path(os.path.expanduser(os.path.join("~", ".torchxrayvision", "models_data")))


def _torchvision_enum(arch: str):
    models, has_tv = optional_import("torchvision.models")
    if not has_tv:
        raise ImportError("ImageNet weights come through torchvision: pip install 'medplugin[vision]' (torchvision).")
    return models.get_weight(TORCHVISION_WEIGHTS[arch])


def weights_file(key: str) -> WeightsFile:
    """The registry entry of ``key``: an architecture of :data:`TORCHVISION_WEIGHTS` (its ImageNet file) or
    ``torchxrayvision:<name>``.

    Raises:
        ValueError: an unknown key, naming the known ones.
    """
    if key in TORCHVISION_WEIGHTS:
        w = _torchvision_enum(key)
        size = w.meta.get("_file_size")
        return WeightsFile("imagenet", key, key, torch_cache_dir() / os.path.basename(w.url), w.url,
                           float(size) if size is not None else None, TORCHVISION_WEIGHTS[key])
    name = key[len(XRV_PREFIX):] if key.startswith(XRV_PREFIX) else None
    if name in XRV_WEIGHTS:
        entry = XRV_WEIGHTS[name]
        return WeightsFile(XRV_PREFIX + name, entry.arch, XRV_PREFIX + name, xrv_cache_dir() / entry.file, entry.url,
                           None)
    known = sorted(TORCHVISION_WEIGHTS) + [XRV_PREFIX + n for n in XRV_WEIGHTS]
    raise ValueError(f"unknown weights {key!r}: choose one of {known}.")


def known_weights() -> list[WeightsFile]:
    """Every published file the bundles can start from: torchvision's ImageNet files, then torchxrayvision's."""
    return [weights_file(a) for a in TORCHVISION_WEIGHTS] + [weights_file(XRV_PREFIX + n) for n in XRV_WEIGHTS]


def _offline_reason(url: str, timeout: float) -> str | None:
    """Why ``url`` cannot be downloaded now (``None`` when its server answers): ``MEDPLUGIN_OFFLINE`` set, or
    a HEAD request that fails within ``timeout`` seconds (proxies from the environment are honoured)."""
    flag = os.environ.get("MEDPLUGIN_OFFLINE", "").strip().lower()
    if flag not in ("", "0", "false", "no"):
        return f"MEDPLUGIN_OFFLINE={os.environ['MEDPLUGIN_OFFLINE']}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:  # the server answered (e.g. 403 to HEAD): downloading may still work
        return None
    except (urllib.error.URLError, OSError) as e:
        return f"{type(e).__name__}: {getattr(e, 'reason', e)}"


def _unavailable(wf: WeightsFile, reason: str) -> WeightsUnavailableError:
    what = (f"ImageNet weights for {wf.arch} (torchvision {wf.weights})" if wf.weights
            else f"torchxrayvision's {wf.fetch_name[len(XRV_PREFIX):]} weights ({wf.arch})")
    return WeightsUnavailableError(
        wf.path,
        f"{what} are not in the cache folder {wf.path.parent} and cannot be downloaded here ({reason}). "
        f"On a machine with internet access run `medplugin weights fetch {wf.fetch_name}` and copy the file "
        f"{wf.path.name} it writes into {wf.path.parent} on this machine; or train from random weights with "
        f"--pretrained none.",
    )


def fetch(key: str, progress: bool = True, timeout: float = 10.0) -> Path:
    """Make sure the file of ``key`` (see :func:`weights_file`) is in its cache folder, downloading it if needed.

    torchvision files are downloaded by torchvision's weights API (``get_state_dict(check_hash=True)``, which
    checks the SHA-256 prefix in the file name); torchxrayvision files by torchxrayvision itself
    (``torchxrayvision.models.get_weights``; ``pip install 'medplugin[xrv]'``). Nothing is downloaded when the
    file is cached.

    Returns:
        the cached file.

    Raises:
        WeightsUnavailableError: not cached and not downloadable (offline), with what to do.
        ImportError: a torchxrayvision file to download without torchxrayvision installed.
    """
    wf = weights_file(key)
    if wf.cached:
        return wf.path
    reason = _offline_reason(wf.url, timeout)
    if reason is not None:
        raise _unavailable(wf, reason)
    try:
        if wf.weights:
            _torchvision_enum(wf.arch).get_state_dict(progress=progress, check_hash=True, weights_only=True,
                                                      map_location="cpu")
        else:
            xrv_models, has_xrv = optional_import("torchxrayvision.models")
            if not has_xrv:
                raise ImportError(f"downloading {wf.fetch_name} needs torchxrayvision: pip install 'medplugin[xrv]', "
                                  f"or download {wf.url} into {wf.path.parent} yourself.")
            with warnings.catch_warnings():  # torchxrayvision silences every warning of the process on import
                xrv_models.get_weights(wf.fetch_name[len(XRV_PREFIX):], cache_dir=str(wf.path.parent))
    except (urllib.error.URLError, OSError) as e:
        raise _unavailable(wf, f"{type(e).__name__}: {e}") from e
    logger.info("downloaded %s to %s", wf.url, wf.path)
    return wf.path


def _read(wf: WeightsFile) -> dict[str, torch.Tensor]:
    if wf.weights:  # through torchvision's weights API: reads the cached file (weights_only), downloads if absent
        try:
            return _torchvision_enum(wf.arch).get_state_dict(progress=False, check_hash=True, weights_only=True,
                                                             map_location="cpu")
        except pickle.UnpicklingError as e:
            raise BadInputError(wf.path, "refused to load: the file holds pickled Python objects that could run "
                                         "code, not plain weights; delete it and fetch it again") from e
        except (RuntimeError, EOFError, ValueError) as e:
            raise BadInputError(wf.path, f"not a readable PyTorch weights file ({type(e).__name__}: {e}); "
                                         "delete it and fetch it again") from e
    return read_pickled_module(wf.path, XRV_MODULE_CLASSES)


def _looks_like_a_name(value: str) -> bool:
    return os.sep not in value and "/" not in value and not os.path.splitext(value)[1]


def resolve_pretrained(
    pretrained: str | os.PathLike | None, arch: str, timeout: float = 10.0
) -> StartingWeights | None:
    """Read the starting weights ``pretrained`` names for ``arch`` (see the module docstring).

    Args:
        pretrained: ``None`` or ``"none"`` (no weights: returns ``None``), ``"imagenet"``,
            ``"torchxrayvision:<name>"`` or a path to a local state dict.
        arch: the architecture to initialise (a key of :data:`TORCHVISION_WEIGHTS` for ``imagenet``).
        timeout: seconds to wait for the download server before calling the file unavailable.

    Returns:
        the weights and their record (``{"pretrained", "file", ...}``, logged and kept in ``model.json``), or
        ``None``.

    Raises:
        ValueError: ``imagenet`` for an architecture without torchvision weights, an unknown torchxrayvision
            name, or torchxrayvision weights for another architecture than DenseNet-121.
        WeightsUnavailableError: a published file neither cached nor downloadable here.
        BadInputError: a missing, unreadable or unsafe file.
    """
    if pretrained is None or str(pretrained).lower() == "none":
        return None
    value = os.fspath(pretrained)
    if value == "imagenet":
        if arch not in TORCHVISION_WEIGHTS:
            raise ValueError(f"pretrained='imagenet': torchvision publishes no ImageNet weights for {arch!r} "
                             f"(those of {sorted(TORCHVISION_WEIGHTS)}); pass a local file in its layout as "
                             "pretrained PATH, or pretrained none to train from random weights.")
        wf = weights_file(arch)
        if not wf.cached:
            fetch(arch, progress=False, timeout=timeout)
        state = _read(wf)
        record = {"pretrained": "imagenet", "weights": f"torchvision {wf.weights}", "file": str(wf.path)}
        logger.info("%s starts from ImageNet weights: %s (torchvision %s)", arch, wf.path, wf.weights)
        return StartingWeights(state, record)
    if value.startswith(XRV_PREFIX):
        wf = weights_file(value)
        if arch != wf.arch:
            raise ValueError(f"pretrained={value!r} is a {wf.arch} model; it cannot start arch {arch!r}.")
        if not wf.cached:
            fetch(value, progress=False, timeout=timeout)
        entry = XRV_WEIGHTS[value[len(XRV_PREFIX):]]
        state = _read(wf)
        logger.info("%s starts from torchxrayvision's %s: %s", arch, entry.name, wf.path)
        return StartingWeights(state, {"pretrained": value, "file": str(wf.path)}, labels=entry.labels)
    if not os.path.exists(value) and _looks_like_a_name(value):
        raise ValueError(f"pretrained={value!r} is neither a file nor a known source: use imagenet, none, "
                         f"{XRV_PREFIX}<{'|'.join(XRV_WEIGHTS)}> or a path to a weights file.")
    state = read_state_dict(value)
    logger.info("%s starts from the weights file %s", arch, value)
    return StartingWeights(state, {"pretrained": value, "file": os.path.abspath(value)})


def refuse_frozen_from_scratch(pretrained, frozen: bool, mode: str) -> None:
    """Refuse ``pretrained: none`` where the network keeps layers frozen: frozen random layers learn nothing.

    Args:
        pretrained: the run's ``pretrained`` value (``None``, the library default, is not checked: those
            networks get trained weights loaded afterwards).
        frozen: whether the network keeps layers frozen.
        mode: the setting that freezes them, named in the error (e.g. ``"freeze_backbone true"``).

    Raises:
        ValueError: ``pretrained`` is ``"none"`` and ``frozen``.
    """
    if frozen and pretrained is not None and str(pretrained).lower() == "none":
        raise ValueError(f"pretrained='none' with {mode}: frozen layers keep their random weights and learn "
                         "nothing. Start from published weights (pretrained: imagenet, or a weights file) or train "
                         "the whole network.")


def _canonical(label: str) -> str:
    return label.strip().lower().replace(" ", "_")


def map_labels(source: Sequence[str], target: Sequence[str]) -> tuple[dict[int, int], list[str]]:
    """Match the outputs of a labelled model onto ``target`` labels by name (case and ``_``/space ignored).

    Returns:
        ``({target index: source index}, [target labels the source lacks])``; empty source labels never match.
    """
    where = {_canonical(s): i for i, s in enumerate(source) if s}
    mapping = {t: where[_canonical(name)] for t, name in enumerate(target) if _canonical(name) in where}
    return mapping, [name for t, name in enumerate(target) if t not in mapping]


def copy_labelled_head(network: torch.nn.Module, start: StartingWeights, class_names: Sequence[str],
                       src_prefix: str, dst_prefix: str) -> list[str]:
    """Copy a labelled model's output rows (``src_prefix`` weight and bias) onto the network's outputs of the
    same name; outputs the source lacks keep their initialisation and are named in the log.

    Returns:
        the class names that start fresh.
    """
    mapping, fresh = map_labels(start.labels or (), class_names)
    own = network.state_dict()
    rows = {}
    for part in ("weight", "bias"):
        src, dst = start.state[f"{src_prefix}{part}"], own[f"{dst_prefix}{part}"].clone()
        for t, s in mapping.items():
            dst[t] = src[s]
        rows[f"{dst_prefix}{part}"] = dst
    network.load_state_dict(rows, strict=False)
    logger.info("outputs taken from %s for %d of %d classes%s", start.record["pretrained"], len(mapping),
                len(class_names), f"; starting fresh: {', '.join(fresh)}" if fresh else "")
    return fresh


XRV_CRITERION = "torchxrayvision op_threshs"


def xrv_operating_points(entry: XRVWeights, class_names: Sequence[str]) -> dict[str, dict]:
    """torchxrayvision's operating points as ``model.json``'s ``operating_points`` (per class: ``threshold``,
    ``criterion`` :data:`XRV_CRITERION`).

    torchxrayvision publishes, per pathology, the probability ``op_thresh`` at its chosen operating point and
    rescales its outputs so that it maps to 0.5 (``torchxrayvision.models.op_norm``). Exported models keep the
    network's logits as they are and store these thresholds instead, so the bundles call each finding where
    torchxrayvision does (``score >= op_thresh``). A class without an operating point there (NaN) gets 0.5,
    marked ``fallback``.
    """
    mapping, _ = map_labels(entry.labels, class_names)
    points = {}
    for t, name in enumerate(class_names):
        p = entry.op_threshs[mapping[t]] if t in mapping else math.nan
        if not math.isnan(p) and 0 < p < 1:
            points[name] = {"threshold": float(p), "criterion": XRV_CRITERION}
        else:
            points[name] = {"threshold": 0.5, "criterion": XRV_CRITERION,
                            "fallback": "no torchxrayvision operating point: default threshold 0.5"}
    return points


def recorded_normalization(model_dir: str | os.PathLike | None) -> tuple[list[float], list[float]] | None:
    """The ``normalization`` recorded in ``model_dir/model.json`` (written with the trained weights), if any."""
    if not model_dir:
        return None
    meta_path = Path(model_dir) / "model.json"
    if not meta_path.is_file():
        return None
    try:
        norm = json.loads(meta_path.read_text()).get("normalization")
    except (json.JSONDecodeError, AttributeError) as e:
        raise BadInputError(meta_path, f"not valid JSON ({e})") from e
    if isinstance(norm, Sequence) and len(norm) == 2 and all(isinstance(v, Sequence) for v in norm):
        return [float(v) for v in norm[0]], [float(v) for v in norm[1]]
    return None



def continue_or_start(model_path: str | os.PathLike, default: str = "imagenet") -> str | None:
    """``None`` when a trained ``model_path`` exists (a training that continues from it, as MONAI Label's trainer
    does by loading it over the network: no starting weights to read, and the normalisation recorded beside it
    is kept), else ``default``."""
    return None if Path(model_path).is_file() else default
