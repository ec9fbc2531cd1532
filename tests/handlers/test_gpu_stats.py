"""GPUStatsLogger: images/s and input stall every epoch (GPU utilisation and memory with CUDA)."""

from __future__ import annotations

import time

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.transforms import Lambdad
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from medplugin.handlers import GPUStatsLogger


def _slow(d):
    time.sleep(0.1)  # a loader slow enough to dominate even on a loaded machine
    return d


def _train(tmp_path, slow: bool) -> dict:
    items = [{"image": torch.randn(1, 8, 8), "label": i % 2} for i in range(12)]
    ds = Dataset(items, transform=Lambdad("image", _slow) if slow else None)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    writer = SummaryWriter(str(tmp_path))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=DataLoader(ds, batch_size=4),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=torch.nn.CrossEntropyLoss(),
        train_handlers=[GPUStatsLogger(writer)],
    )
    t0 = time.perf_counter()
    trainer.run()
    elapsed = time.perf_counter() - t0
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    return {t: [e.value for e in acc.Scalars(t)] for t in tags} | {"elapsed": elapsed}


def test_images_per_second_and_input_stall_are_logged_each_epoch(tmp_path):
    fast = _train(tmp_path / "fast", slow=False)
    slow = _train(tmp_path / "slow", slow=True)
    for run in (fast, slow):
        assert len(run["perf/images_per_s"]) == 2 and len(run["perf/data_wait_fraction"]) == 2
        assert all(0 <= f <= 1 for f in run["perf/data_wait_fraction"])
    # 12 images at >= 100 ms each: at most 10 images/s, and the loader is most of the epoch
    assert all(v <= 10.5 for v in slow["perf/images_per_s"])
    assert min(slow["perf/data_wait_fraction"]) > 0.5
    assert max(fast["perf/data_wait_fraction"]) < min(slow["perf/data_wait_fraction"])
    assert min(fast["perf/images_per_s"]) > 2 * max(slow["perf/images_per_s"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_no_gpu_scalars_without_cuda(tmp_path):
    run = _train(tmp_path, slow=False)
    assert not [t for t in run if t.startswith("gpu/")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_memory_is_logged_with_cuda(tmp_path):
    items = [{"image": torch.randn(1, 8, 8), "label": i % 2} for i in range(8)]
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).cuda()
    writer = SummaryWriter(str(tmp_path))
    SupervisedTrainer(device=torch.device("cuda:0"), max_epochs=1, train_data_loader=DataLoader(items, batch_size=4),
                      network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                      loss_function=torch.nn.CrossEntropyLoss(), train_handlers=[GPUStatsLogger(writer)]).run()
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.Scalars("gpu/max_memory_allocated_gb")[0].value > 0


def test_interval_is_checked():
    with pytest.raises(ValueError, match="interval must be at least 1, got 0"):
        GPUStatsLogger(None, interval=0)
