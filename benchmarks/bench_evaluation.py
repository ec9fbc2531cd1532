"""Evaluation across processes: the OCT bundle's evaluation (``train.yaml`` + ``evaluate.yaml``) of one trained
model on one test set, run as a user runs it, in one process vs ``torchrun --nproc_per_node=2`` with
``multi_gpu_evaluate.yaml`` (gloo on the CPU, one thread per process; images/s including each run's start-up,
higher is better). On a 2-core machine the ideal is 2.0; start-up, the gather and rank 0's report writing cost the
rest. Both sides are timed alternately (ABBA...) after a warm-up, median kept, and must write the same figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "retina_oct_classification"
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _cmd(processes: int, data: Path, ckpt: Path, out: Path, *files: str, **overrides) -> list[str]:
    conf = BUNDLE / "configs"
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}"] if processes > 1 else []
    cmd = [sys.executable, *launcher, "-m", "monai.bundle", "run", "--bundle_root", str(BUNDLE), "--config_file",
           json.dumps([*(str(conf / f) for f in files), str(SMOKE)]), "--dataset_dir", str(data), "--ckpt_dir",
           str(ckpt), "--output_dir", str(out)]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run failed ({proc.returncode}): {' '.join(cmd[:8])}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[tuple]:
    from medplugin.data.synthetic.oct import make_oct2017_demo

    test_patients, reps, arch, size = (2, 1, "resnet18", 64) if quick else (4, 3, "resnet50", 224)
    settings = {"arch": arch, "image_size": size, "batch_size": 8, "bootstrap": 200}
    with tempfile.TemporaryDirectory(prefix="medplugin-bench-") as tmp:
        root = Path(tmp)
        info = make_oct2017_demo(root, train_patients=2, test_patients=test_patients, images_per_patient=4,
                                 size=(248, 256), seed=0)
        data, ckpt = Path(info["root"]), root / "models"
        _run(_cmd(1, data, ckpt, root / "train", "train.yaml", **settings))  # one epoch: a model to evaluate
        k = iter(range(10**6))
        times: dict[int, list[float]] = {1: [], 2: []}
        reports = {}
        for r in range(reps + 1):  # the first round warms both sides up and is not kept
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                out = root / f"evaluate{next(k)}"
                files = ("train.yaml", "evaluate.yaml") + (("multi_gpu_evaluate.yaml",) if n > 1 else ())
                seconds = _run(_cmd(n, data, ckpt, out, *files, **settings))
                if r:
                    times[n].append(seconds)
                reports[n] = json.loads((out / "metrics.json").read_text())
        if reports[1]["n"] != reports[2]["n"] or abs(reports[1]["accuracy"] - reports[2]["accuracy"]) > 1e-9:
            raise RuntimeError("one and two processes scored different test sets")
        n_images = reports[1]["n"]
        what = (f"evaluation {arch} {size}px of {n_images} OCT images incl. start-up, images/s "
                f"(median of {reps})")
        return [(what, "torchrun 2 processes (gloo)", n_images / statistics.median(times[2]), "1 process",
                 n_images / statistics.median(times[1]))]
