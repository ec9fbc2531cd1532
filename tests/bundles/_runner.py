"""Run bundles the way users do: ``python -m monai.bundle ...`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.bundles._warm import run_monai_bundle

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"


def bundle_dir(name: str) -> Path:
    return REPO / "bundles" / name


def monai_bundle(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}  # threads: this process's share (conftest)
    proc = run_monai_bundle(args, str(REPO), env, timeout)  # forked from a warm interpreter (tests/bundles/_warm.py)
    if proc.returncode != 0:
        raise AssertionError(
            f"monai.bundle {args[0]} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


# evaluation is an overlay merged after the training config; several processes add multi_gpu_evaluate.yaml
EVALUATE = ("train.yaml", "evaluate.yaml")
MULTI_GPU_EVALUATE = (*EVALUATE, "multi_gpu_evaluate.yaml")


def config_files(name: str, config: str | Sequence[str], *overlays: Path) -> list[str]:
    """The ``--config_file`` list: the bundle's ``config`` (one name or several, merged in order), then ``overlays``."""
    names = [config] if isinstance(config, str) else list(config)
    return [*(str(bundle_dir(name) / "configs" / c) for c in names), *(str(o) for o in overlays)]


def run_bundle(name: str, config: str | Sequence[str], *overlays: Path, **overrides) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of bundle ``name`` with ``config`` (e.g. ``"train.yaml"`` or :data:`EVALUATE`)
    merged with ``overlays``, and ``--key value`` for each of ``overrides``."""
    args = ["run", "--bundle_root", str(bundle_dir(name)), "--config_file",
            json.dumps(config_files(name, config, *overlays))]
    for k, v in overrides.items():
        args += [f"--{k}", str(v)]
    return monai_bundle(*args)


def torchrun_bundle(name: str, config: str | Sequence[str], *overlays: Path, nproc: int = 2,
                    **overrides) -> subprocess.CompletedProcess:
    """As :func:`run_bundle`, under ``torchrun --nproc_per_node=nproc`` (gloo on the CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "monai.bundle", "run",
           "--bundle_root", str(bundle_dir(name)), "--config_file", json.dumps(config_files(name, config, *overlays))]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=quiet_env())
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def quiet_env() -> dict:
    """Environment of a training subprocess: no warnings, one thread (the tests run beside each other's I/O)."""
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def tb_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file in ``tb_dir``, read by TensorBoard: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def kill_after_first_checkpoint(cmd: list[str], bundle_root: Path, timeout: float = 300) -> tuple[int, str]:
    """Start training ``cmd``; SIGKILL it the moment its first per-epoch checkpoint under ``bundle_root`` appears.

    Returns (return code, output). Fails if the run ends, or writes no checkpoint, before that.
    """
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=REPO, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + timeout
    try:
        while not list(Path(bundle_root).glob("runs/train_*/checkpoints/training_checkpoint_*.pt")):
            assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, f"no checkpoint within {timeout} s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def kill_inference_after_rows(name: str, table: Path, rows: int, *overlays: Path, timeout: float = 300,
                              **overrides) -> None:
    """Run bundle ``name``'s ``inference.yaml`` (with ``overlays`` and ``--key value`` overrides) and SIGKILL it the
    moment its result ``table`` holds ``rows`` rows after the header. Fails if the run ends before that."""
    import signal
    import time

    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(bundle_dir(name)), "--config_file",
           json.dumps(config_files(name, "inference.yaml", *overlays))]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=quiet_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if table.is_file() and table.read_bytes().count(b"\n") >= rows + 1:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed: give it more inputs"
