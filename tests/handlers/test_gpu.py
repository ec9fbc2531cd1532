"""GPUStatsLogger on a tiny ignite engine: images per second and the input stall, read back from TensorBoard."""

from __future__ import annotations

import time

import pytest
import torch
from ignite.engine import Engine
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from medplugin.handlers import GPUStatsLogger


class _Loader:
    """Four decollated batches of three images; each batch takes ``delay`` seconds to arrive."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __iter__(self):
        for _ in range(4):
            time.sleep(self.delay)
            yield [{"image": torch.zeros(1, 4, 4), "label": 0} for _ in range(3)]

    def __len__(self) -> int:
        return 4


def _run(logdir, load_s: float, step_s: float, epochs: int = 2, interval: int = 1) -> dict:
    engine = Engine(lambda e, b: time.sleep(step_s))
    writer = SummaryWriter(str(logdir))
    GPUStatsLogger(writer, interval=interval).attach(engine)
    t0 = time.perf_counter()
    engine.run(_Loader(load_s), max_epochs=epochs)
    elapsed = time.perf_counter() - t0
    writer.close()
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    out = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    return out | {"elapsed": elapsed}


def test_a_slow_loader_shows_as_input_stall(tmp_path):
    stalled = _run(tmp_path / "stalled", load_s=0.03, step_s=0.0)
    busy = _run(tmp_path / "busy", load_s=0.0, step_s=0.03)
    for run in (stalled, busy):
        assert [s for s, _ in run["perf/images_per_s"]] == [1, 2] == [s for s, _ in run["perf/data_wait_fraction"]]
        # 12 images per epoch of at least 4 x 30 ms: at most 100 images/s
        assert all(0 < v <= 100.5 for _, v in run["perf/images_per_s"])
    assert min(v for _, v in stalled["perf/data_wait_fraction"]) > 0.6
    assert max(v for _, v in busy["perf/data_wait_fraction"]) < 0.4


def test_interval_and_no_gpu_scalars_on_the_cpu(tmp_path):
    run = _run(tmp_path, load_s=0.0, step_s=0.0, epochs=4, interval=2)
    assert [s for s, _ in run["perf/images_per_s"]] == [2, 4]
    if not torch.cuda.is_available():
        assert not [t for t in run if t.startswith("gpu/")]
    with pytest.raises(ValueError, match="interval must be at least 1, got 0"):
        GPUStatsLogger(None, interval=0)
