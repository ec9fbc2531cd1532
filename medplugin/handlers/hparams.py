"""TensorBoard hparams: record a training run's hyperparameters in the run's own event folder."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events

from medplugin.handlers._engine import is_main_process

__all__ = ["HParamsLogger", "hparam_value"]

logger = logging.getLogger(__name__)


def hparam_value(value: Any) -> bool | int | float | str:
    """Turn a config value into one TensorBoard's hparams plugin can show (number, string or bool).

    Args:
        value: a hyperparameter as the config resolved it (``None``, a number, a string, a list, a device...).

    Numbers and strings pass unchanged (a non-finite float becomes its string, which the plugin can hold);
    ``None`` becomes ``"None"`` so an unset option is still listed; anything else its ``str``.
    """
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return hparam_value(value.item())
    return str(value)


class HParamsLogger:
    """Write the run's hyperparameters to TensorBoard's hparams plugin, in the run's own event file.

    ``SummaryWriter.add_hparams`` opens a new sub-folder per call, so a run would show up as two runs; this
    handler writes the plugin's three summaries (experiment, session start, session end) through the
    run's own writer instead. The experiment names ``metric_names`` as its metrics: the plugin reads their
    values from the scalars of the same tags that the validation handlers write to this folder, so the
    hparams table shows each run's hyperparameters next to its validation results.

    The experiment and session start are written when the engine starts, the session end (status
    success) when it completes. Only rank 0 writes.

    Args:
        summary_writer: the run's ``torch.utils.tensorboard.SummaryWriter``.
        hparams: hyperparameter name -> value (values are converted with :func:`hparam_value`).
        metric_names: scalar tags shown as the metrics of the hparams table (e.g. ``["val_accuracy"]``).
    """

    def __init__(self, summary_writer, hparams: Mapping[str, Any], metric_names: Sequence[str] = ()) -> None:
        if not isinstance(hparams, Mapping) or not hparams:
            raise ValueError(f"hparams must be a non-empty mapping of name -> value, got {hparams!r}.")
        if isinstance(metric_names, str):
            raise ValueError(f"metric_names must be a list of scalar tags, got the string {metric_names!r}.")
        self.writer = summary_writer
        self.hparams = {str(k): hparam_value(v) for k, v in hparams.items()}
        self.metric_names = [str(m) for m in metric_names]
        self._summaries = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _file_writer(self):
        get = getattr(self.writer, "_get_file_writer", None)
        return get() if callable(get) else None

    def started(self, engine: Engine) -> None:
        if not is_main_process():
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        fw = self._file_writer()
        if fw is None:  # a no-op writer (e.g. the stand-in on ranks > 0)
            return
        self._summaries = hparams_summaries(self.hparams, {m: 0.0 for m in self.metric_names})
        exp, ssi, _ = self._summaries
        fw.add_summary(exp)
        fw.add_summary(ssi)
        self.writer.flush()

    def completed(self, engine: Engine) -> None:
        if self._summaries is None or not is_main_process():
            return
        fw = self._file_writer()
        fw.add_summary(self._summaries[2], engine.state.iteration)
        self.writer.flush()
