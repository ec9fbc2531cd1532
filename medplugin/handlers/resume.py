"""Resuming a training run after a crash from the last checkpoint in its run folder."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from ignite.metrics import Metric

from medplugin.errors import BadInputError
from medplugin.handlers._engine import is_main_process

__all__ = ["TrainingCheckpoint", "latest_checkpoint", "resume_requested"]

logger = logging.getLogger(__name__)

PREFIX = "training"
SUBDIR = "checkpoints"
_CKPT = re.compile(rf"^{PREFIX}_checkpoint_(\d+)\.pt$")


def resume_requested(resume: Any) -> bool:
    """Whether a ``resume`` hyperparameter asks to resume: ``True``, ``"true"``, ``"yes"``, ``"1"`` or a folder path.

    ``None``, ``False``, ``""``, ``"false"``, ``"no"``, ``"0"`` and ``"none"`` mean a fresh run.
    """
    if resume is None or isinstance(resume, bool):
        return bool(resume)
    if isinstance(resume, (int, float)):
        return bool(resume)
    return str(resume).strip().lower() not in ("", "false", "no", "0", "none", "null")


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoints/training_checkpoint_<n>.pt`` of a run folder (highest ``n``), or ``None``."""
    folder = Path(run_dir) / SUBDIR
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name)) and p.is_file()]
    return max(found)[1] if found else None


def _stateful_handlers(engine: Engine | None) -> dict[str, Any]:
    """Handler objects attached to ``engine`` that carry state worth keeping (e.g. ``BestModelSaver.best``)."""
    found: dict[str, Any] = {}
    if engine is None:
        return found
    for handlers in engine._event_handlers.values():
        for func, *_ in handlers:
            obj = getattr(func, "__self__", func)  # bound methods and callable handler objects
            if isinstance(obj, (Engine, Metric)):  # metrics are recomputed every validation
                continue
            if hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict"):
                name = f"{type(obj).__name__}"
                if name in found and found[name] is not obj:
                    name = f"{name}_{len(found)}"
                found.setdefault(name, obj)
    return found


class _BestMetric:
    """MONAI's ``state.best_metric``/``best_metric_epoch`` of an evaluator, as a ``state_dict`` for ignite."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict:
        return {"best_metric": float(getattr(self.engine.state, "best_metric", -1.0)),
                "best_metric_epoch": int(getattr(self.engine.state, "best_metric_epoch", -1))}

    def load_state_dict(self, state: dict) -> None:
        self.engine.state.best_metric = float(state["best_metric"])
        self.engine.state.best_metric_epoch = int(state["best_metric_epoch"])


class TrainingCheckpoint:
    """Save everything a training run needs to continue after a crash, and load it back when asked to resume.

    At the end of every epoch (after validation, the learning-rate step and every other handler of that epoch)
    the trainer's epoch and iteration, the network, the optimizer, the learning-rate scheduler and the state of
    stateful handlers of ``validator`` (``BestModelSaver``'s best metric) are written, atomically, with ignite's
    ``Checkpoint``/``DiskSaver`` to ``save_dir/checkpoints/training_checkpoint_<iteration>.pt`` (only the last
    ``n_saved`` are kept; rank 0 writes). With ``resume`` set, the newest checkpoint there is loaded when the
    trainer starts, so training goes on from the last completed epoch and ends after ``max_epochs`` epochs in
    all, as an uninterrupted run would. The checkpoint is read with ``torch.load(weights_only=True)``.

    A run killed mid-epoch loses the unfinished epoch only; it is repeated on resume (with another data order).

    Args:
        save_dir: the run folder (the bundle's ``output_dir``).
        network: the network being trained (DDP-wrapped is fine).
        optimizer: its optimizer.
        lr_scheduler: the learning-rate scheduler, or ``None``.
        validator: the validation engine; its handlers with ``state_dict``/``load_state_dict`` are saved too.
        resume: see :func:`resume_requested`; truthy loads the newest checkpoint of ``save_dir`` (it must exist).
        n_saved: how many checkpoints to keep.
        every_n_epochs: save every N epochs (the last epoch is always saved).
    """

    def __init__(self, save_dir: str, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 lr_scheduler: Any = None, validator: Engine | None = None, resume: Any = False,
                 n_saved: int = 1, every_n_epochs: int = 1) -> None:
        if n_saved < 1 or every_n_epochs < 1:
            raise ValueError(f"n_saved and every_n_epochs must be >= 1, got {n_saved} and {every_n_epochs}.")
        self.save_dir = Path(save_dir)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.validator = validator
        self.resume = resume_requested(resume)
        self.n_saved = n_saved
        self.every_n_epochs = every_n_epochs
        self.loaded_from: Path | None = None
        self._checkpoint: Checkpoint | None = None

    def _objects(self, engine: Engine) -> dict[str, Any]:
        net = (
            self.network.module if isinstance(getattr(self.network, "module", None), torch.nn.Module) else self.network
        )
        objs: dict[str, Any] = {"trainer": engine, "network": net, "optimizer": self.optimizer}
        if self.lr_scheduler is not None:
            objs["lr_scheduler"] = self.lr_scheduler
        if self.validator is not None:
            objs["validator_best"] = _BestMetric(self.validator)
            for name, obj in _stateful_handlers(self.validator).items():
                objs[f"validator_{name}"] = obj
        return objs

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)

    def _started(self, engine: Engine) -> None:
        objs = self._objects(engine)
        if self.resume:
            self.load(engine, objs)
            self.resume = False  # once: a later run() of the same trainer goes on from where it is
        if self._checkpoint is None:
            saver = DiskSaver(str(self.save_dir / SUBDIR), atomic=True, create_dir=True, require_empty=False)
            # n_saved=None: ignite removes the oldest checkpoint *before* writing the next, which left no checkpoint
            # on disk while the next was written (a kill or Ctrl-C then had nothing to resume from); _prune removes
            # the old ones once the new one is complete
            self._checkpoint = Checkpoint(objs, saver, filename_prefix=PREFIX, n_saved=None,
                                          global_step_transform=lambda e, _: e.state.iteration)
            # registered now, when every other handler is attached, so it runs after them at the epoch's end
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _save(self, engine: Engine) -> None:
        if engine.state.epoch % self.every_n_epochs == 0 or engine.state.epoch >= (engine.state.max_epochs or 0):
            self._checkpoint(engine)
            if is_main_process():
                self._prune()
                logger.info("checkpoint of epoch %d written to %s", engine.state.epoch, self.save_dir / SUBDIR)

    def _prune(self) -> None:
        """Keep the newest ``n_saved`` checkpoints, including those left by the run this one resumed."""
        folder = self.save_dir / SUBDIR
        found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name)))
        for _, p in found[:-self.n_saved]:
            p.unlink(missing_ok=True)

    def load(self, engine: Engine, objs: dict[str, Any] | None = None) -> None:
        """Load the newest checkpoint of ``save_dir`` into the trainer, network, optimizer, scheduler, handlers."""
        path = latest_checkpoint(self.save_dir)
        if path is None:
            raise BadInputError(self.save_dir, "resume was asked for but this run folder has no checkpoint "
                                               f"({SUBDIR}/{PREFIX}_checkpoint_<n>.pt); start a new run instead")
        objs = objs if objs is not None else self._objects(engine)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError, ...
            raise BadInputError(path, f"cannot read this checkpoint safely ({str(e).splitlines()[0][:300]})") from e
        missing = sorted(set(objs) - set(state))
        if missing:
            raise BadInputError(path, f"checkpoint lacks {missing}; it was written by another configuration")
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=objs, checkpoint=state)
        if max_epochs is not None:  # the run's configured num_epochs wins (it may extend a finished run)
            if engine.state.epoch > max_epochs:
                raise BadInputError(path, f"checkpoint is at epoch {engine.state.epoch}, beyond num_epochs "
                                          f"{max_epochs}; raise --num_epochs")
            engine.state.max_epochs = max_epochs
        self.loaded_from = path
        logger.info("resumed from %s at epoch %d (iteration %d)", path, engine.state.epoch, engine.state.iteration)
