"""Weights files in the published names and layouts, filled with random tensors, for tests that must run offline.

torchvision's files go to ``<torch_home>/hub/checkpoints/<the file name of torchvision's weights enum>`` (what
``torch.hub`` reads when ``TORCH_HOME`` points there); torchxrayvision's whole pickled models go to
``<home>/.torchxrayvision/models_data/<file>`` (what torchxrayvision reads when ``HOME`` points there).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
import torchvision

from medplugin.networks.weights import TORCHVISION_WEIGHTS, XRV_WEIGHTS

_NEW_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")


def torchvision_file_name(arch: str) -> str:
    """The file name torchvision's weights enum (the one the registry names) downloads, read from torchvision."""
    return os.path.basename(torchvision.models.get_weight(TORCHVISION_WEIGHTS[arch]).url)


def write_torchvision_file(torch_home: Path, arch: str, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """torchvision's ImageNet file of ``arch`` in its published layout with random tensors.

    DenseNet-121's file is torchvision's 2017 ``densenet121-a639ec97.pth``: old key names (``norm.1``,
    ``conv.2``, ...) and no ``num_batches_tracked``. Returns the path and the state dict as written.
    """
    torch.manual_seed(seed)
    kwargs = {"init_weights": False, "aux_logits": True} if arch == "inception_v3" else {}
    state = torchvision.models.get_model(arch, weights=None, **kwargs).state_dict()
    for v in state.values():  # distinguishable from any fresh initialisation
        if v.is_floating_point():
            v.normal_()
    if arch == "densenet121":
        state = {_NEW_DENSENET_KEY.sub(r"\1.\2.\3", k): v for k, v in state.items()
                 if not k.endswith("num_batches_tracked")}
        assert any(".norm.1." in k for k in state)
    path = Path(torch_home) / "hub" / "checkpoints" / torchvision_file_name(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, state


def write_xrv_file(home: Path, name: str = "densenet121-res224-nih", legacy: bool = False,
                   seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """torchxrayvision's release file of ``name``: a whole pickled ``torchxrayvision.models.DenseNet`` (18
    outputs, one input channel) with random tensors; ``legacy`` saves it in torch's pre-1.6 file format.

    Returns the path and the model's state dict.
    """
    with warnings.catch_warnings():  # torchxrayvision silences every warning of the process on import
        import torchxrayvision as xrv
    torch.manual_seed(seed)
    model = xrv.models.DenseNet(num_classes=18, in_channels=1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = Path(home) / ".torchxrayvision" / "models_data" / XRV_WEIGHTS[name].file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    return path, {k: v.clone() for k, v in model.state_dict().items()}
