"""Grad-CAM inference (the bundles' GradCAMInferer: forward with the graph kept, one partial backward, maps)
vs plain inference of the same network under no_grad, as the evaluator runs them (ms per image, lower is
better; the ratio is the cost of CAMs)."""

from __future__ import annotations

import time

import torch

from medplugin.inferers import GradCAMInferer
from medplugin.networks import cam_layer, classifier


def _ms_per_image(fn, x: torch.Tensor, reps: int) -> float:
    fn(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return 1000 * (time.perf_counter() - t0) / (reps * x.shape[0])


def run(quick: bool = False) -> list[tuple]:
    size, batch, reps = (64, 4, 2) if quick else (224, 4, 4)
    rows = []
    for arch in ("resnet50",):
        torch.manual_seed(0)
        net = classifier(arch, in_channels=1, num_classes=4).eval()
        x = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
        plain_inf, cam_inf = GradCAMInferer(cam_layer(arch), enabled=False), GradCAMInferer(cam_layer(arch))

        def plain(t, net=net, plain_inf=plain_inf):
            with torch.no_grad():
                return plain_inf(t, net)

        def with_cam(t, net=net, cam_inf=cam_inf):
            with torch.no_grad():
                logits = cam_inf(t, net)
            return logits, cam_inf.cams()

        rows.append((f"inference {arch} {size}px, ms/image", "with Grad-CAM", _ms_per_image(with_cam, x, reps),
                     "plain", _ms_per_image(plain, x, reps)))
    return rows
