"""A tiny ignite ``Engine`` whose state looks like a MONAI evaluator's, for in-process handler tests.

MONAI's ``SupervisedEvaluator`` decollates its batch and output, so handlers see ``engine.state.batch`` as a
list of per-sample dicts (``image``, ``label``, ``path``, ...) and ``engine.state.output`` as a list of
per-sample dicts with ``pred``, ``label`` and ``image``. Here the predictions are planted: no network runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ignite.engine import Engine
from monai.data import MetaTensor


def sample(path: str, label, size: int = 4, **extra) -> dict:
    """One decollated batch item: a ``MetaTensor`` image that knows its file, its label and its path."""
    image = MetaTensor(torch.zeros(1, size, size), meta={"filename_or_obj": path})
    return {"image": image, "label": torch.as_tensor(label), "path": path, **extra}


def evaluator(samples: Sequence[dict], preds: Sequence, batch_size: int = 2) -> tuple[Engine, list[list[dict]]]:
    """An engine whose ``state.output`` gives ``preds[i]`` as the ``pred`` of ``samples[i]``; and its batches."""
    if len(samples) != len(preds):
        raise ValueError(f"{len(samples)} samples but {len(preds)} predictions.")
    batches = [list(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]
    planted = [[torch.as_tensor(p, dtype=torch.float32) for p in preds[i:i + batch_size]]
               for i in range(0, len(preds), batch_size)]

    def step(engine: Engine, batch: list[dict]) -> list[dict]:
        k = (engine.state.iteration - 1) % len(batches)
        return [{"pred": p, "label": s.get("label"), "image": s["image"]} for s, p in zip(batch, planted[k])]

    return Engine(step), batches
