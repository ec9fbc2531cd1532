"""The common part of our epoch-level ignite metrics: collect probabilities and labels, gather over ranks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from ignite.metrics import Metric
from monai.utils import evenly_divisible_all_gather

__all__ = ["ProbabilityMetric"]


class ProbabilityMetric(Metric, ABC):
    """Base of the metrics computed once an epoch from every sample's probabilities and label.

    ``update`` keeps the batch's ``(N, n_outputs)`` probabilities and its labels (converted by
    :meth:`_labels`); ``compute`` gathers both over all ranks (uneven shards included), builds the report with
    :meth:`report` and returns ``report[key]`` as a float when ``key`` is set (usable as a key metric), otherwise
    the flat dict of :meth:`flatten`, which ignite stores as separate ``engine.state.metrics`` entries.

    Args:
        n_outputs: network outputs per sample (classes, or labels of a multi-label task).
        key: the scalar ``compute`` returns, or ``None`` for the flat dict.
        prefix: prepended to every name of the flat dict (e.g. ``"val_"``).
        output_transform: maps the engine output to ``(probs, labels)``; each a batch tensor or a list of
            per-sample tensors (MONAI's decollated output, e.g. ``monai.handlers.from_engine``).
        device: ignite's metric device.
    """

    def __init__(self, n_outputs: int, key: str | None, prefix: str, output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu") -> None:
        self.n_outputs = int(n_outputs)
        self.key = key
        self.prefix = prefix
        super().__init__(output_transform=output_transform, device=device)

    @abstractmethod
    def _labels(self, labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """The batch's labels in the form :meth:`report` takes (``probs`` is the batch, ``(N, n_outputs)``)."""

    @abstractmethod
    def _empty_labels(self) -> torch.Tensor:
        """The labels of an epoch without samples."""

    @abstractmethod
    def report(self, probs: np.ndarray, labels: np.ndarray) -> dict:
        """The full report of an epoch's gathered probabilities and labels."""

    @abstractmethod
    def flatten(self, report: dict, prefix: str) -> dict[str, float]:
        """The report's scalars as ``{prefix + name: value}``."""

    @staticmethod
    def _stack(x) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            x = torch.stack([torch.as_tensor(v) for v in x])
        return torch.as_tensor(x).detach().cpu()

    def reset(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._labels_seen: list[torch.Tensor] = []

    def update(self, output) -> None:
        probs, labels = output
        probs = self._stack(probs).float()
        labels = self._labels(self._stack(labels), probs)
        self._probs.append(probs.reshape(-1, self.n_outputs))
        self._labels_seen.append(labels)

    def compute(self):
        probs = torch.cat(self._probs) if self._probs else torch.zeros(0, self.n_outputs)
        labels = torch.cat(self._labels_seen) if self._labels_seen else self._empty_labels()
        probs = evenly_divisible_all_gather(probs, concat=True)
        labels = evenly_divisible_all_gather(labels, concat=True)
        report = self.report(probs.numpy(), labels.numpy())
        if self.key is not None:
            return float(report[self.key])
        return self.flatten(report, self.prefix)
