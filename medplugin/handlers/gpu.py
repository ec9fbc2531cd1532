"""Throughput, input stall and GPU utilisation/memory per epoch, to TensorBoard."""

from __future__ import annotations

import logging
import time

import torch
from ignite.engine import Engine, Events
from monai.utils import optional_import

from medplugin.handlers._engine import is_main_process

__all__ = ["GPUStatsLogger"]

logger = logging.getLogger(__name__)

pynvml, has_pynvml = optional_import("pynvml")


def _batch_size(batch) -> int:
    if isinstance(batch, (list, tuple)):
        return len(batch)
    if isinstance(batch, dict):
        for v in batch.values():
            if hasattr(v, "shape") and len(v.shape):
                return int(v.shape[0])
            if isinstance(v, (list, tuple)):
                return len(v)
    if hasattr(batch, "shape") and len(batch.shape):
        return int(batch.shape[0])
    return 0


class GPUStatsLogger:
    """Log an epoch's speed and, with CUDA, the GPU's utilisation and memory to TensorBoard.

    Every ``interval`` epochs (rank 0 only) it writes:

    - ``perf/images_per_s``: images trained per second of the epoch;
    - ``perf/data_wait_fraction``: share of the epoch spent waiting for the data loader (an input stall shows
      as a large value; near 0 means the network, not the input pipeline, sets the pace);
    - with CUDA on the engine's device: ``gpu/utilization_percent`` (needs ``pynvml``; left out without it),
      ``gpu/memory_allocated_gb``, ``gpu/max_memory_allocated_gb`` (peak of the epoch; reset after each write)
      and ``gpu/memory_reserved_gb``. On the CPU the GPU scalars are not written.

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        interval: epochs between writes.
        device: the CUDA device to read (default: the engine's ``state.device``, else the current one).
    """

    def __init__(self, summary_writer, interval: int = 1, device: str | torch.device | None = None) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval must be at least 1, got {interval!r}.")
        self.writer = summary_writer
        self.interval = int(interval)
        self.device = None if device is None else torch.device(device)
        self._reset()

    def _reset(self) -> None:
        self._t0 = time.perf_counter()
        self._wait = 0.0
        self._images = 0
        self._get_t = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._get_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._get_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _epoch_started(self, engine: Engine) -> None:
        self._reset()

    def _get_started(self, engine: Engine) -> None:
        self._get_t = time.perf_counter()

    def _get_completed(self, engine: Engine) -> None:
        if self._get_t is not None:
            self._wait += time.perf_counter() - self._get_t
        self._images += _batch_size(engine.state.batch)

    def _cuda_device(self, engine: Engine) -> torch.device | None:
        if not torch.cuda.is_available():
            return None
        dev = self.device or getattr(engine.state, "device", None)
        dev = torch.device(dev) if dev is not None else torch.device("cuda", torch.cuda.current_device())
        if dev.type != "cuda":
            return None
        return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())

    def stats(self, engine: Engine) -> dict[str, float]:
        """The scalars of the epoch that just ended."""
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        out = {"perf/images_per_s": self._images / elapsed, "perf/data_wait_fraction": min(1.0, self._wait / elapsed)}
        dev = self._cuda_device(engine)
        if dev is not None:
            gb = 1024.0 ** 3
            out["gpu/memory_allocated_gb"] = torch.cuda.memory_allocated(dev) / gb
            out["gpu/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(dev) / gb
            out["gpu/memory_reserved_gb"] = torch.cuda.memory_reserved(dev) / gb
            if has_pynvml:
                try:
                    out["gpu/utilization_percent"] = float(torch.cuda.utilization(dev))
                except Exception as e:  # NVML missing or not permitted in this container
                    logger.debug("GPU utilisation unavailable: %s", e)
            torch.cuda.reset_peak_memory_stats(dev)
        return out

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.interval or not is_main_process():
            return
        for tag, value in self.stats(engine).items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()
