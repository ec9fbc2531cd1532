"""Knee ACL-region 3D U-Net (the knee_mri_segmentation bundle's network) per-volume inference: eager PyTorch vs
TorchScript vs ONNX Runtime on one 32x256x256 volume (an MRNet-size sagittal exam), and the cost of the
sliding window: overlap 0.5 vs 0.25, and overlap 0.25 vs one whole-volume pass. Volumes/s, higher is better;
every ratio is measured in one run (quick mode: 16x64x64, so that CI can run it). The eager variants (two overlaps,
whole volume) are all warmed up first and then timed in alternating order, median kept: timed one after the other,
the first pays the warm-up and a slower variant could read faster."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference

from medplugin.networks import knee_unet3d


def _rate(fn, n: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def _alternating(fns: dict, n: int, reps: int) -> dict:
    """Rates of several variants: each warmed up, then timed in alternating order (ABC, CBA, ...), median kept."""
    for fn in fns.values():
        fn()
    rates: dict = {k: [] for k in fns}
    for r in range(reps):
        for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            t0 = time.perf_counter()
            for _ in range(n):
                fns[k]()
            rates[k].append(n / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


def run(quick: bool = False) -> list[tuple]:
    shape, roi, n = ((16, 64, 64), (16, 32, 32), 2) if quick else ((32, 256, 256), (16, 128, 128), 3)
    torch.manual_seed(0)
    net = knee_unet3d().eval()  # bundle defaults: features 16-32-64-128, one residual unit per level
    x = torch.rand(1, 1, *shape)

    def sw(model, overlap):
        return lambda: sliding_window_inference(x, roi, 4, model, overlap=overlap, mode="gaussian")

    rows = []
    with torch.no_grad():
        eager = _alternating({"sw25": sw(net, 0.25), "sw50": sw(net, 0.5), "whole": lambda: net(x)}, n,
                             1 if quick else 3)
        eager_sw, eager_sw50, eager_whole = eager["sw25"], eager["sw50"], eager["whole"]
        scripted = torch.jit.script(net)
        ts_sw = _rate(sw(scripted, 0.25), n)
        rows.append((f"knee 3D U-Net {'x'.join(map(str, shape))}, sliding window 0.25, volumes/s",
                     "TorchScript", ts_sw, "eager PyTorch", eager_sw))
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "unet.onnx"
            torch.onnx.export(net, x, str(path), input_names=["image"], output_names=["pred"],
                              dynamic_axes={"image": {2: "s", 3: "h", 4: "w"}}, dynamo=False)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            onnx_whole = _rate(lambda: sess.run(None, {"image": x.numpy()}), n)
        rows.append((f"knee 3D U-Net {'x'.join(map(str, shape))}, one whole-volume pass, volumes/s",
                     "ONNX Runtime", onnx_whole, "eager PyTorch", eager_whole))
        rows.append((f"knee 3D U-Net sliding window, volumes/s (alternated, median of {1 if quick else 3})",
                     "overlap 0.5", eager_sw50, "overlap 0.25", eager_sw))
        rows.append(("knee 3D U-Net whole volume, volumes/s", "sliding window 0.25", eager_sw,
                     "one whole-volume pass", eager_whole))
    return rows
