"""Reading per-sample records out of a MONAI engine's state; the base of handlers that collect and write once."""

from __future__ import annotations

from collections.abc import Iterator

from ignite.engine import Events


def iter_samples(engine) -> Iterator[tuple[dict, dict]]:
    """Yield ``(batch_item, output_item)`` per sample, whether or not the engine decollated its state."""
    batch, output = engine.state.batch, engine.state.output
    if isinstance(batch, dict):
        n = len(next(iter(batch.values())))
        batch = [{k: v[i] for k, v in batch.items()} for i in range(n)]
    if isinstance(output, dict):
        n = len(next(iter(output.values())))
        output = [{k: (v[i] if hasattr(v, "__getitem__") else v) for k, v in output.items()} for i in range(n)]
    yield from zip(batch, output)


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed): only it writes files."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class Collector:
    """Base of the handlers that collect per iteration and write once: :meth:`reset` on ``start_event`` (a run's
    start), :meth:`collect` on every iteration, :meth:`write` on ``end_event`` (the run's end)."""

    start_event = Events.STARTED
    end_event = Events.COMPLETED

    def attach(self, engine) -> None:
        """Attach to ``engine`` (an ignite ``Engine``, e.g. MONAI's evaluator)."""
        engine.add_event_handler(self.start_event, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(self.end_event, self.write)

    def reset(self, engine=None) -> None:
        """Forget what an earlier run collected."""

    def collect(self, engine) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def write(self, engine=None):  # pragma: no cover - every subclass defines it
        raise NotImplementedError
