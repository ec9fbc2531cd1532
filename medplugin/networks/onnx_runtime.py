"""Running an exported ONNX model with ONNX Runtime behind the ``nn.Module`` interface MONAI engines call.

Bundles choose ``backend: torch`` (the PyTorch network with ``models/model.pt``) or ``backend: onnx`` (a file
written by ``python -m monai.bundle onnx_export``); the rest of the inference config is the same.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from monai.utils import optional_import
from torch import nn

from medplugin.errors import BadInputError

__all__ = ["OnnxRuntimeNetwork", "inference_network", "BACKENDS"]

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX model run by ONNX Runtime, called like the PyTorch network it was exported from.

    ``forward`` takes a float tensor batch, runs the session (sample by sample when the model was exported with
    a fixed batch size of 1) and returns a float32 tensor on the input's device. It has no parameters and
    computes no gradients (no Grad-CAM with this backend).

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers (default: CUDA when available there, then CPU).

    Raises:
        BadInputError: a missing or unreadable file.
        ImportError: onnxruntime is not installed.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None) -> None:
        super().__init__()
        ort, has_ort = optional_import("onnxruntime")
        if not has_ort:
            raise ImportError("backend 'onnx' needs onnxruntime: pip install onnxruntime")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise BadInputError(self.path, "ONNX model file not found (export one with `monai.bundle onnx_export`)")
        available = ort.get_available_providers()
        wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(self.path, providers=[p for p in wanted if p in available] or None)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BadInputError(self.path, f"not a loadable ONNX model ({type(e).__name__}: {e})") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        logger.info("ONNX Runtime model %s (providers %s)", self.path, self.session.get_providers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().cpu().numpy()
        if self.fixed_batch == 1 and arr.shape[0] != 1:
            out = np.concatenate(
                [self.session.run(None, {self.input_name: arr[i : i + 1]})[0] for i in range(arr.shape[0])]
            )
        else:
            out = self.session.run(None, {self.input_name: arr})[0]
        return torch.as_tensor(out, dtype=torch.float32, device=x.device)

    def __getstate__(self):  # sessions do not pickle
        raise TypeError("OnnxRuntimeNetwork cannot be pickled; build it in each process.")


def inference_network(backend: str, network_def: nn.Module, onnx_path: str | None = None,
                      device: str | torch.device = "cpu") -> nn.Module:
    """The network an inference config runs: ``network_def`` on ``device`` (``torch``) or an ONNX Runtime model.

    Args:
        backend: ``"torch"`` or ``"onnx"``.
        network_def: the PyTorch network (weights are loaded later by ``ModelLoader``).
        onnx_path: the ``.onnx`` file, required for ``"onnx"``.
        device: device of the PyTorch network.

    Raises:
        ValueError: an unknown backend or a missing ``onnx_path``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "torch":
        return network_def.to(device)
    if not onnx_path:
        raise ValueError("backend 'onnx' needs onnx_path: the .onnx file from `monai.bundle onnx_export`.")
    return OnnxRuntimeNetwork(onnx_path)
