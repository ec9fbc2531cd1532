"""The common part of our epoch-level ignite metrics: ignite's ``EpochMetric`` holding probabilities and labels."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ignite.metrics import EpochMetric
from monai.utils import evenly_divisible_all_gather

__all__ = ["ReportMetric"]


def _plain_tensor(x) -> torch.Tensor:
    """A batch tensor without MONAI metadata from a tensor, a MetaTensor or a list of per-sample tensors."""
    if isinstance(x, (list, tuple)):
        return torch.stack([_plain_tensor(v) for v in x])
    return torch.as_tensor(x).as_subclass(torch.Tensor).detach()  # a MetaTensor's metadata goes


class ReportMetric(EpochMetric):
    """Ignite's :class:`~ignite.metrics.EpochMetric` whose epoch result is a report built from all probabilities.

    ``update`` keeps the batch's ``(N, n_outputs)`` probabilities (as float32) and its labels (converted by
    :meth:`_labels`). ``compute`` gathers both over all ranks, builds the report with :meth:`report` and returns
    ``report[key]`` as a float when ``key`` is set (usable as a key metric), otherwise the flat dict of
    :meth:`flatten`, which ignite stores as separate ``engine.state.metrics`` entries.

    ``compute`` replaces ``EpochMetric.compute`` for two reasons. Its ``idist.all_gather`` needs the same number
    of samples on every rank, but validation under MONAI's ``DistributedSampler(even_divisible=False)`` gives
    uneven shards (gloo aborts the process on the size mismatch); MONAI's ``evenly_divisible_all_gather`` pads,
    gathers and trims instead, so every sample counts exactly once. And ``EpochMetric`` computes on rank 0 and
    broadcasts a number, which cannot carry the flat dict; every rank computes the same report from the same
    gathered data here. An epoch without samples gives the report of no samples (NaN figures), not an error.

    Args:
        n_outputs: network outputs per sample (classes, or labels of a multi-label task).
        key: the scalar ``compute`` returns, or ``None`` for the flat dict.
        keys: the report's scalars ``key`` may name.
        prefix: prepended to every name of the flat dict (e.g. ``"val_"``).
        output_transform: maps the engine output to ``(probs, labels)``; each a batch tensor or a list of
            per-sample tensors (MONAI's decollated output, e.g. ``monai.handlers.from_engine``).
        device: where ignite keeps the epoch's tensors.
    """

    def __init__(self, n_outputs: int, key: str | None, keys: Sequence[str], prefix: str,
                 output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        if key is not None and key not in keys:
            raise ValueError(f"key must be None or one of {tuple(keys)}, got {key!r}.")
        self.n_outputs, self.key, self.prefix = int(n_outputs), key, prefix
        super().__init__(self._report_value, output_transform=output_transform, check_compute_fn=False,
                         device=device)

    @abstractmethod
    def report(self, probs: np.ndarray, labels: np.ndarray) -> dict:
        """The full report of an epoch's gathered probabilities and labels."""

    @abstractmethod
    def flatten(self, report: dict, prefix: str) -> dict[str, float]:
        """The report's scalars as ``{prefix + name: value}``."""

    def _labels(self, labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """The batch's class indices from indices or one-hot rows (the multi-label metric overrides this)."""
        if labels.dim() > 1 and labels.shape[-1] == self.n_outputs:
            labels = labels.argmax(dim=-1)
        return labels.reshape(-1).long()

    def _empty_labels(self) -> torch.Tensor:
        """The labels of no samples, in the shape and dtype :meth:`_labels` gives."""
        return torch.zeros(0, dtype=torch.long)

    def update(self, output) -> None:
        probs, labels = (_plain_tensor(x) for x in output)
        if probs.numel() % self.n_outputs:
            raise ValueError(f"expected (batch, {self.n_outputs}) probabilities, got shape {tuple(probs.shape)}.")
        super().update((probs.float().reshape(-1, self.n_outputs), self._labels(labels, probs)))

    def compute(self):
        if self._result is None:
            empty = self._empty_labels()
            probs = torch.cat(self._predictions) if self._predictions else torch.zeros(0, self.n_outputs)
            labels = torch.cat(self._targets) if self._targets else empty
            # EpochMetric.update squeezes a width of 1; the gather needs the same dims on every rank (empty or not)
            probs = evenly_divisible_all_gather(probs.reshape(-1, self.n_outputs).to(self._device), concat=True)
            labels = evenly_divisible_all_gather(labels.reshape(-1, *empty.shape[1:]).to(self._device), concat=True)
            self._result = self.compute_fn(probs, labels)
        return self._result

    def _report_value(self, probs: torch.Tensor, labels: torch.Tensor):
        report = self.report(probs.cpu().numpy().reshape(-1, self.n_outputs), labels.cpu().numpy())
        return float(report[self.key]) if self.key is not None else self.flatten(report, self.prefix)
