"""A tqdm progress bar for bundle configs."""

from __future__ import annotations

from collections.abc import Callable

from ignite.engine import Engine

from medplugin.handlers._engine import is_main_process

__all__ = ["ProgressBar"]


class ProgressBar:
    """ignite's tqdm ``ProgressBar`` as a handler a MONAI config can list (it has ``attach(engine)``).

    Shown on rank 0 only. With the default ``output_transform`` it shows the training loss.

    Args:
        output_transform: engine output -> the value(s) to show, e.g. ``from_engine(['loss'], first=True)``.
        persist: keep each epoch's finished bar on screen.
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = True) -> None:
        self.output_transform = output_transform
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        from ignite.handlers import ProgressBar as _Bar

        bar = _Bar(persist=self.persist)
        transform = self.output_transform
        if transform is None:
            bar.attach(engine)
        else:
            bar.attach(engine, output_transform=lambda out: {"loss": float(transform(out))})
