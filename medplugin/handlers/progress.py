"""A tqdm progress bar for bundle configs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine

from medplugin.handlers._engine import is_main_process

__all__ = ["ProgressBar"]


class ProgressBar:
    """ignite's tqdm ``ProgressBar`` as a handler a MONAI config can list (it has ``attach(engine)``).

    Shown on rank 0 only. With the default ``output_transform`` it shows the training loss. With ``unit`` (e.g.
    ``"files"``, for inference) the bar counts the items of each batch instead of batches, so its rate and time left
    are in files, against the number of items the loader holds (this process's share under ``torch.distributed``).

    Args:
        output_transform: engine output -> the value(s) to show, e.g. ``from_engine(['loss'], first=True)``.
        persist: keep each epoch's finished bar on screen.
        unit: count items of this name (``"files"``) instead of batches.
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = True,
                 unit: str | None = None) -> None:
        self.output_transform = output_transform
        self.persist = persist
        self.unit = unit

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        if self.unit:
            self._attach_items(engine)
            return
        from ignite.handlers import ProgressBar as _Bar

        bar = _Bar(persist=self.persist)
        transform = self.output_transform
        if transform is None:
            bar.attach(engine)
        else:
            bar.attach(engine, output_transform=lambda out: {"loss": float(transform(out))})

    def _attach_items(self, engine: Engine) -> None:
        from ignite.engine import Events
        from tqdm.auto import tqdm

        bars: list = []

        def start(e: Engine) -> None:
            loader = e.state.dataloader
            sampler = getattr(loader, "sampler", None)
            total = len(sampler) if sampler is not None and hasattr(sampler, "__len__") else None
            bars.append(tqdm(total=total, unit=f" {self.unit}", leave=self.persist, dynamic_ncols=True))

        def step(e: Engine) -> None:
            if bars:
                bars[-1].update(_batch_len(e.state.batch))

        def close(e: Engine) -> None:
            while bars:
                bars.pop().close()

        engine.add_event_handler(Events.EPOCH_STARTED, start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, step)
        engine.add_event_handler(Events.EPOCH_COMPLETED, close)
        engine.add_event_handler(Events.TERMINATE, close)


def _batch_len(batch: Any) -> int:
    """How many items a collated batch holds: the first dimension of its first tensor (1 when it has none)."""
    if isinstance(batch, dict):
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        values = [batch]
    for v in values:
        shape = getattr(v, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
        if isinstance(v, (list, tuple)) and not isinstance(batch, (list, tuple)):
            return len(v)
    return len(values) if isinstance(batch, (list, tuple)) else 1
