"""Bundle batch inference (the evaluator of ``retina_oct_classification``'s ``inference.yaml``, parsed by MONAI's
``ConfigParser``, with and without Grad-CAM overlays) vs a plain PyTorch loop over the same folder of OCT2017-sized
JPEGs, the same network and weights, batch size and workers (images/s, higher is better; target at least 0.9 for
plain inference on the CPU), and the time to the first prediction of one image through ``python -m monai.bundle run``
vs a plain script, each in a fresh process (seconds, lower is better).

Both sides are warmed up and timed alternately (ABBA...), median kept, so drift of the machine lands on neither.
"""

from __future__ import annotations

import csv
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medplugin.networks import classifier, input_normalization

CLASSES = 4
ARCH = "resnet50"
BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "retina_oct_classification"

class _Files(torch.utils.data.Dataset):
    """What a user writes by hand: PIL decode, antialiased resize, [0, 1], the network's normalisation."""

    def __init__(self, files: list[str], size: int, mean: float, std: float) -> None:
        self.files, self.size, self.mean, self.std = files, size, mean, std

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            x = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32))[None, None]
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)[0]
        return (x.round().clamp(0, 255) / 255.0 - self.mean) / self.std


def plain_loop(folder: Path, ckpt: Path, out: Path, size: int, batch: int, workers: int) -> None:
    """The plain PyTorch loop over ``folder``: same network and weights, probabilities to a CSV."""
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    (mean,), (std,) = input_normalization(ARCH, 1)
    net = classifier(ARCH, in_channels=1, num_classes=CLASSES)
    net.load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))
    net.eval()
    rows = []
    loader = torch.utils.data.DataLoader(_Files(files, size, mean, std), batch_size=batch, num_workers=workers)
    with torch.no_grad():
        for x in loader:
            rows.extend(torch.softmax(net(x), 1).tolist())
    out.mkdir(parents=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        csv.writer(f).writerows([p, *r] for p, r in zip(files, rows))


REPO = str(Path(__file__).resolve().parents[1])
PLAIN_SCRIPT = (f"import sys; from pathlib import Path; sys.path.insert(0, {REPO!r})\n"
                "from benchmarks.bench_inference import plain_loop\n"
                "a = sys.argv[1:]; plain_loop(Path(a[0]), Path(a[1]), Path(a[2]), *map(int, a[3:6]))\n")


def bundle_loop(folder: Path, ckpt: Path, out: Path, cams: bool, size: int, batch: int, workers: int) -> None:
    """The bundle's inference evaluator, parsed from ``inference.yaml`` in this process, run over ``folder``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(folder), "ckpt_dir": str(ckpt),
                   "output_dir": str(out), "save_cams": cams, "image_size": size, "batch_size": batch,
                   "num_workers": workers, "class_names": list("abcd")})
    parser.get_parsed_content("evaluator").run()


def _folder(root: Path, n: int, shape: tuple[int, int]) -> Path:
    from PIL import Image

    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random(shape) * 64 + np.linspace(0, 160, shape[1])[None]).astype(np.uint8)
        Image.fromarray(img).save(folder / f"scan_{i:04d}.jpg", quality=90)
    return folder


def _checkpoint(root: Path) -> Path:
    ckpt = root / "models"
    ckpt.mkdir()
    torch.manual_seed(0)
    torch.save(classifier(ARCH, in_channels=1, num_classes=CLASSES).state_dict(), ckpt / "model.pt")
    return ckpt


def _bundle_cmd(folder: Path, ckpt: Path, out: Path, cams: bool, size: int, batch: int, workers: int) -> list[str]:
    b = BUNDLE
    return [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(b),
            "--config_file", str(b / "configs" / "inference.yaml"), "--dataset_dir", str(folder),
            "--ckpt_dir", str(ckpt), "--output_dir", str(out), "--save_cams", str(cams).lower(),
            "--image_size", str(size), "--batch_size", str(batch), "--num_workers", str(workers),
            "--class_names", "$['a','b','c','d']"]


def _plain_cmd(folder: Path, ckpt: Path, out: Path, size: int, batch: int, workers: int) -> list[str]:
    return [sys.executable, "-c", PLAIN_SCRIPT, str(folder), str(ckpt), str(out), str(size), str(batch), str(workers)]


def _timed(cmd: list[str], out: Path) -> float:
    """Wall seconds of one run in a fresh process, as a user runs it; its predictions must exist afterwards."""
    gc.collect()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not (out / "predictions.csv").is_file():
        raise RuntimeError(f"benchmark run failed ({proc.returncode}): {' '.join(cmd[:6])}\n{proc.stderr[-3000:]}")
    return seconds


def _same_predictions(a: Path, b: Path) -> None:
    """The two sides predict the same probabilities, so the benchmark compares like with like (to 0.01: MONAI's
    Gaussian anti-aliasing before the resize and torch's antialiased resize differ slightly)."""
    with open(a) as f:
        rows_a = {r[0]: [float(v) for v in r[2:2 + CLASSES]] for r in list(csv.reader(f))[1:]}
    with open(b) as f:
        rows_b = {r[0]: [float(v) for v in r[1:1 + CLASSES]] for r in csv.reader(f)}
    if rows_a.keys() != rows_b.keys():
        raise RuntimeError("bundle and plain loop saw different files")
    worst = max(abs(x - y) for k in rows_a for x, y in zip(rows_a[k], rows_b[k]))
    if worst > 0.01:
        raise RuntimeError(f"bundle and plain loop disagree by {worst:.4g}: not the same preprocessing")


def run(quick: bool = False) -> list[tuple]:
    n, reps = (16, 1) if quick else (64, 3)
    size, batch, workers, shape = 224, 16, 2, (496, 512)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medplugin-bench-") as tmp:
        root = Path(tmp)
        folder, ckpt = _folder(root, n, shape), _checkpoint(root)
        one = root / "one"
        one.mkdir()
        (one / "scan.jpg").write_bytes((folder / "scan_0000.jpg").read_bytes())
        k = iter(range(10**6))

        def side(which: str) -> tuple[float, Path]:
            out = root / f"out{next(k)}"
            gc.collect()
            t0 = time.perf_counter()
            if which == "plain":
                plain_loop(folder, ckpt, out, size, batch, workers)
            else:
                bundle_loop(folder, ckpt, out, which == "cam", size, batch, workers)
            return time.perf_counter() - t0, out

        _same_predictions(side("bundle")[1] / "predictions.csv", side("plain")[1] / "predictions.csv")  # warm-up
        times: dict[str, list[float]] = {"plain": [], "bundle": [], "cam": []}
        for r in range(reps):
            for which in (("plain", "bundle", "cam") if r % 2 == 0 else ("cam", "bundle", "plain")):
                times[which].append(side(which)[0])
        plain = n / statistics.median(times["plain"])
        what = f"{ARCH} {shape[0]}x{shape[1]} JPEG -> {size}, batch {batch}, {workers} workers"
        rows.append((f"batch inference {what}, images/s (median of {reps})", "bundle evaluator",
                     n / statistics.median(times["bundle"]), "plain PyTorch loop", plain))
        rows.append((f"batch inference {what}, images/s (median of {reps})", "bundle with Grad-CAM overlays",
                     n / statistics.median(times["cam"]), "plain PyTorch loop (no CAMs)", plain))
        first: dict[str, list[float]] = {"plain": [], "bundle": []}
        out = root / f"out{next(k)}"
        _timed(_plain_cmd(one, ckpt, out, size, 1, 0), out)  # warm-up (page cache of the libraries)
        for r in range(reps):
            for which in (("plain", "bundle") if r % 2 == 0 else ("bundle", "plain")):
                out = root / f"out{next(k)}"
                cmd = (_plain_cmd(one, ckpt, out, size, 1, 0) if which == "plain"
                       else _bundle_cmd(one, ckpt, out, False, size, 1, 0))
                first[which].append(_timed(cmd, out))
        rows.append((f"time to the first prediction of one image, s (fresh process, median of {reps})",
                     "python -m monai.bundle run", statistics.median(first["bundle"]), "plain script",
                     statistics.median(first["plain"])))
    return rows
