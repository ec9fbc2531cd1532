"""Reading per-sample records out of a MONAI engine's state."""

from __future__ import annotations

from collections.abc import Iterator


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
