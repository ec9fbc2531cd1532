"""What the input-pipeline benchmarks share: the images per second of one epoch over a dataset."""

from __future__ import annotations

import time

from monai.data import DataLoader


def epoch_images_per_s(ds, batch_size: int = 8) -> float:
    """One shuffled epoch over ``ds`` in this process (no workers: the pipeline's own cost), in images/s."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
    t0 = time.perf_counter()
    n = sum(b["image"].shape[0] for b in loader)
    return n / (time.perf_counter() - t0)
