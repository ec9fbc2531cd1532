"""Training engine (configured as the bundles configure it) vs a plain PyTorch loop, and eager PyTorch vs ONNX
Runtime inference, for the OCT bundle's network on the same in-memory data, measured in one run (images/s, higher
is better)."""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import torch
from monai.engines import SupervisedTrainer
from torch.utils.data import DataLoader, TensorDataset

from medplugin.networks import classifier


def _data(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, size, size, generator=g), torch.randint(0, 4, (n,), generator=g)


def _plain_loop(net, loader, epochs: int) -> float:
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def _engine(net, data, batch: int, epochs: int) -> float:
    x, y = data
    items = [{"image": x[i], "label": y[i]} for i in range(x.shape[0])]
    loader = DataLoader(items, batch_size=batch, shuffle=False, num_workers=0)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=net,
                                optimizer=torch.optim.Adam(net.parameters(), lr=1e-4),
                                loss_function=torch.nn.CrossEntropyLoss(), optim_set_to_none=True)
    t0 = time.perf_counter()
    trainer.run()
    return epochs * x.shape[0] / (time.perf_counter() - t0)


def _eager_vs_onnx(net, size: int, n: int, batch: int) -> tuple[float, float]:
    import onnxruntime as ort

    net.eval()
    x = torch.randn(batch, 1, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(net, x, str(path), input_names=["image"], output_names=["pred"],
                          dynamic_axes={"image": {0: "b"}, "pred": {0: "b"}}, dynamo=False)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        sess.run(None, {"image": x.numpy()})
        t0 = time.perf_counter()
        for _ in range(n):
            sess.run(None, {"image": x.numpy()})
        onnx_ips = n * batch / (time.perf_counter() - t0)
    with torch.no_grad():
        net(x)
        t0 = time.perf_counter()
        for _ in range(n):
            net(x)
        eager_ips = n * batch / (time.perf_counter() - t0)
    return eager_ips, onnx_ips


def run(quick: bool = False) -> list[tuple]:
    """Engine and plain loop are timed in alternating order (ABBA...) from the same initial weights and the
    median of each is kept: timed one after the other, a drift of the machine (caches, frequency, other load)
    lands on one side and moves the ratio by more than the difference being measured."""
    import statistics

    size, n, batch, epochs, reps = (32, 32, 8, 1, 1) if quick else (64, 128, 16, 1, 8)
    data = _data(n, size)
    rows = []
    for arch in ("resnet50",):
        torch.manual_seed(0)
        initial = classifier(arch, in_channels=1, num_classes=4).state_dict()

        def fresh(arch=arch, initial=initial):
            net = classifier(arch, in_channels=1, num_classes=4)
            net.load_state_dict(initial)
            return net

        loader = DataLoader(TensorDataset(*data), batch_size=batch, shuffle=False)
        _plain_loop(fresh(), loader, 1)  # warm-up
        plain, engine = [], []
        for r in range(reps):
            order = [("plain", "engine"), ("engine", "plain")][r % 2]
            for which in order:
                gc.collect()  # the previous trainer's reference cycles (ignite handlers) freed before timing
                if which == "plain":
                    plain.append(_plain_loop(fresh(), loader, epochs))
                else:
                    engine.append(_engine(fresh(), data, batch, epochs))
        rows.append((f"train {arch} {size}px, images/s (median of {reps})", "MONAI engine",
                     statistics.median(engine), "plain loop", statistics.median(plain)))
        eager, onnx = _eager_vs_onnx(fresh(), size, 3 if quick else 10, batch)
        rows.append((f"inference {arch} {size}px, images/s", "ONNX Runtime", onnx, "eager PyTorch", eager))
    return rows
