"""Run bundles the way users do: ``python -m monai.bundle ...`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"


def bundle_dir(name: str) -> Path:
    return REPO / "bundles" / name


def monai_bundle(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"monai.bundle {args[0]} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_bundle(name: str, config: str, *overlays: Path, **overrides) -> subprocess.CompletedProcess:
    b = bundle_dir(name)
    files = [str(b / "configs" / config), *[str(o) for o in overlays]]
    args = ["run", "--bundle_root", str(b), "--config_file", json.dumps(files)]
    for k, v in overrides.items():
        args += [f"--{k}", str(v)]
    return monai_bundle(*args)
