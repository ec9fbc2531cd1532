"""``python -m benchmarks`` discovers the bench_*.py modules and prints one table (no thresholds in CI)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from tests.bundles._runner import REPO


@pytest.mark.integration  # runs `python -m benchmarks` in a subprocess
def test_quick_suite_prints_the_table_with_cache_cam_and_gpu_parts():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "cache", "cam", "gpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| benchmark | A | B | A/B |" in out and "machine: " in out
    rows = [r for r in out.splitlines() if r.startswith("| ") and not r.startswith("| benchmark")]
    names = [r.split(" | ")[0] for r in rows]
    assert sum("input pipeline, 2nd epoch" in n for n in names) == 2  # memory and disk cache
    assert any("with Grad-CAM" in r for r in rows)
    for r in rows:  # every row has two positive figures and their ratio
        a, b, ratio = (float(v) for v in re.findall(r": ([0-9.e+-]+) \|", r) + [r.rstrip(" |").split("| ")[-1]])
        assert a > 0 and b > 0 and abs(ratio - a / b) <= 0.01 * max(1, a / b)
    if torch.cuda.is_available():
        assert any(n.startswith("| GPU train densenet121") for n in names)
    else:
        assert "skipped gpu: no CUDA device" in out


def test_every_bench_module_is_discovered():
    from benchmarks.__main__ import discover

    assert {"cache", "cam", "classification", "evaluation", "gpu", "inference"} <= set(discover())
