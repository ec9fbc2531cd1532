"""Reading per-sample records out of a MONAI engine's state, gathering them over ranks, and the base of handlers that
collect per iteration and write once."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator

from ignite.engine import Events

logger = logging.getLogger(__name__)


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


def gather_samples(engine, *columns: list) -> tuple[list, ...]:
    """Every rank's per-sample records, in the order one process would have seen them.

    Each of ``columns`` holds one entry per sample this rank's engine ran, in its order (e.g. probabilities,
    labels, file names). Outside a distributed run they come back as they are. Under ``torchrun`` they are
    gathered from all ranks (``all_gather_object``, so every rank gets everything) and put in dataset order by
    the indices of the engine's data-loader sampler (a ``DistributedSampler`` gives rank ``r`` the items
    ``r, r + W, ...``); an index met twice (a sampler padding its shards to equal length) is kept once. Without
    such indices the ranks' records are concatenated in rank order, with a warning.

    Args:
        engine: the engine whose data loader produced the samples, or ``None`` (not distributed).
        columns: per-sample lists of this rank.

    Returns:
        the gathered columns, one list each.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tuple(list(c) for c in columns)
    n = len(columns[0]) if columns else 0
    sampler = getattr(getattr(getattr(engine, "state", None), "dataloader", None), "sampler", None)
    try:
        order = [int(i) for i in sampler] if sampler is not None else None
    except (TypeError, ValueError):
        order = None
    if order is not None and len(order) != n:
        order = None
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (order, [list(c) for c in columns]))
    if any(o is None for o, _ in parts):
        logger.warning("the data loader's sampler gives no sample indices: records gathered in rank order")
        return tuple([v for _, cols in parts for v in cols[k]] for k in range(len(columns)))
    rows: dict[int, list] = {}
    for o, cols in parts:
        for j, idx in enumerate(o):
            rows.setdefault(idx, [c[j] for c in cols])
    ordered = [rows[i] for i in sorted(rows)]
    return tuple([r[k] for r in ordered] for k in range(len(columns)))


class Collector(ABC):
    """Base of the handlers that collect per iteration and write once: :meth:`reset` on ``start_event`` (a run's
    start), :meth:`collect` on every iteration, :meth:`write` on ``end_event`` (the run's end)."""

    start_event = Events.STARTED
    end_event = Events.COMPLETED

    def attach(self, engine) -> None:
        """Attach to ``engine`` (an ignite ``Engine``, e.g. MONAI's evaluator)."""
        engine.add_event_handler(self.start_event, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(self.end_event, self.write)

    def reset(self, engine=None) -> None:  # noqa: B027 - optional hook: a collector with nothing to forget
        """Forget what an earlier run collected."""

    @abstractmethod
    def collect(self, engine) -> None:
        """Keep what this iteration's output holds for :meth:`write`."""

    @abstractmethod
    def write(self, engine=None):
        """Write what the run collected (gathered over ranks where the subclass needs every sample)."""
