"""GPU only: training images/s of DenseNet-121 and ResNet-50 at 224 with the fast path (bf16/fp16 autocast,
channels-last, cudnn.benchmark, batch augmentation on the GPU) vs plain fp32, on synthetic in-memory batches,
and the OCT2017-sized epoch (83,484 images) that those rates give. Skipped without CUDA."""

from __future__ import annotations

import time

import torch

from medplugin.networks import classifier
from medplugin.transforms import BatchRandAugment

OCT2017_TRAIN = 83_484


def skip_reason() -> str | None:
    """Why this benchmark cannot run here (``None`` when it can)."""
    return None if torch.cuda.is_available() else "no CUDA device: GPU training throughput not measured"


def _train_ips(arch: str, fast: bool, batch: int, steps: int, size: int = 224) -> float:
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = fast
    torch.manual_seed(0)
    net = classifier(arch, in_channels=1, num_classes=4).to(dev)
    if fast:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=fast and dtype == torch.float16)
    aug = BatchRandAugment()
    x_u8 = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8).pin_memory()
    y = torch.randint(0, 4, (batch,)).to(dev)

    def step():
        x = x_u8.to(dev, non_blocking=True).float().div_(255).sub_(0.5).div_(0.25)
        x = aug(x)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=fast):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    torch.backends.cudnn.benchmark = False
    return steps * batch / (time.perf_counter() - t0)


def run(quick: bool = False) -> list[tuple]:
    if skip_reason():
        return []
    batch, steps = (32, 5) if quick else (128, 30)
    rows = []
    for arch in ("densenet121", "resnet50"):
        fast, plain = _train_ips(arch, True, batch, steps), _train_ips(arch, False, batch, steps)
        rows.append((f"GPU train {arch} 224px b{batch}, images/s", "fast path", fast, "fp32 plain", plain))
        rows.append((f"GPU OCT2017 epoch {arch} (83,484 images), s", "fast path", OCT2017_TRAIN / fast,
                     "fp32 plain", OCT2017_TRAIN / plain))
    return rows
