"""The settings check of MONAI's export commands (``ckpt_export``, ``onnx_export``, ``trt_export``).

They build ``network_def`` of ``inference.yaml`` and load ``--ckpt_file`` into it without any handler, so the
network's ``_requires_`` (:func:`check_trained_model`, through ``medplugin.utils.check_trained_model``) is where a
model trained with other settings is refused, with the overrides that fix it, and where the export's own overrides
are checked and its failures end in one line (:mod:`medplugin.run_guard`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from medplugin.errors import BadInputError
from medplugin.run_guard import DEBUG_ENV, RUN_ARGS, _truthy, check_overrides, install

__all__ = ["check_trained_model", "NETWORK_KEYS"]

NETWORK_KEYS = ("arch", "backbone", "transfer", "in_channels", "class_names", "network")
"""The recorded settings that shape the network (compared by an export command; a bundle run compares all)."""
_EXPORTS = ("ckpt_export", "onnx_export", "trt_export")
_EXPORT_ARGS = ("net_id", "filepath", "ckpt_file", "key_in_ckpt", "use_trace", "input_shape", "converter_kwargs",
                "precision", "dynamic_batchsize", "device", "use_onnx", "onnx_input_names", "onnx_output_names",
                "bundle_root")


def _export_context(frame: FrameType | None) -> tuple[str | None, Any, dict | None]:
    """(``ckpt_file``, ``config_file``, the remaining arguments) of a running MONAI export command, if any."""
    while frame is not None:
        if frame.f_code.co_name in _EXPORTS and "ckpt_file_" in frame.f_locals:
            local = frame.f_locals
            return local.get("ckpt_file_"), local.get("config_file_"), local.get("_args")
        frame = frame.f_back
    return None, None, None


def check_trained_model(ckpt_dir: str | os.PathLike, expected: Mapping, skip: Sequence[str] = ("split",
                        "normalization")) -> bool:
    """Refuse to build the network for weights trained with other settings (the network's ``_requires_`` in
    ``inference.yaml``), with the overrides that fix it, as the bundle runs' ``ModelLoader`` does.

    MONAI's ``ckpt_export`` / ``onnx_export`` build ``network_def`` and load ``--ckpt_file`` into it without a
    handler: a model trained with another ``arch`` or other classes then fails with a raw state-dict error. This
    check reads the ``model.json`` beside the weights (the export's ``--ckpt_file`` when an export command runs,
    else ``ckpt_dir/model.pt``) and compares the keys it records with ``expected`` (under an export command only
    :data:`NETWORK_KEYS`, the ones that shape the network); it also refuses unknown
    overrides of the export command (see :func:`medplugin.run_guard.unknown_keys`).

    Args:
        ckpt_dir: the folder of ``model.pt`` (used when no export command is running).
        expected: this config's values of the recorded keys (``model_meta``).
        skip: recorded keys not compared here (the patient split; the normalisation, which is read from
            ``model.json`` itself).

    Returns:
        True (for ``_requires_``).

    Raises:
        BadInputError: the model was trained with other settings (naming the ``--key value`` overrides).
        UnknownKeyError: an override of the export command names no id of its config files.
    """
    import json

    from medplugin.handlers.checkpoint import _norm, _overrides

    ckpt_file, config_file, args = _export_context(sys._getframe(1))
    if ckpt_file is not None:  # an export ends in one line too
        install(None, _truthy(os.environ.get(DEBUG_ENV, "")) or _truthy((args or {}).get("debug", False)))
    if args is not None and config_file is not None:
        check_overrides([k for k in args if k not in _EXPORT_ARGS and k not in RUN_ARGS], config_file)
    path = Path(ckpt_file) if ckpt_file else Path(ckpt_dir) / "model.pt"
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        return True
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise BadInputError(meta_path, f"not a readable model.json ({e})") from e
    # an export builds the network only: settings of the preprocessing (image_size, ...) do not matter there
    compared = [k for k in expected if k not in skip and (ckpt_file is None or k in NETWORK_KEYS)]
    diffs = {k: (meta[k], expected[k]) for k in compared if k in meta and _norm(meta[k]) != _norm(expected[k])}
    if diffs:
        fixes, detail = _overrides(diffs)
        raise BadInputError(path, f"the model was trained with other settings ({detail}); run with {fixes}")
    return True
