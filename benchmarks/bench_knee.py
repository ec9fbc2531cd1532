"""Knee MRI classifier: per-volume inference time, eager PyTorch vs TorchScript and ONNX Runtime.

The MRNet-style 2.5D network (ResNet-18 backbone, the bundle's default) and the 3D ResNet-18 on one
32 x 256 x 256 volume (quick: 8 x 64 x 64), batch size 1 as in batch inference of one exam at a time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from medplugin.networks.knee import knee_classifier


def _seconds_per_volume(fn, x: torch.Tensor, reps: int) -> float:
    fn(x)  # warm-up (TorchScript optimises on the first calls)
    fn(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - t0) / reps


def run(quick: bool = False) -> list[tuple]:
    import onnxruntime as ort

    slices, size, reps = (8, 64, 2) if quick else (32, 256, 3)
    x = torch.randn(1, 1, slices, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    for arch in ("mrnet", "resnet3d18"):
        torch.manual_seed(0)
        net = knee_classifier(arch, "resnet18", num_classes=4, transfer="scratch").eval()
        scripted = torch.jit.script(net)

        def eager(t, net=net):
            with torch.no_grad():
                return net(t)

        def script(t, m=scripted):
            with torch.no_grad():
                return m(t)

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "net.onnx"
            torch.onnx.export(net, (x,), str(path), input_names=["image"], output_names=["pred"], dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            onnx_s = _seconds_per_volume(lambda t, sess=sess: sess.run(None, {"image": t.numpy()}), x, reps)
        eager_s = _seconds_per_volume(eager, x, reps)
        label = f"knee {arch} 1x{slices}x{size}x{size}, ms/volume"
        rows.append((label, "TorchScript", 1000 * _seconds_per_volume(script, x, reps), "eager", 1000 * eager_s))
        rows.append((label, "ONNX Runtime", 1000 * onnx_s, "eager", 1000 * eager_s))
    return rows
