"""Grad-CAM of (sample, label) pairs of a multi-label batch: equal to single Grad-CAM, graph kept for reuse."""

from __future__ import annotations

import pytest
import torch

from medplugin.inferers import GradCAMInferer
from medplugin.visualize.cam import CapturedGradCAM


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(6, 8, 3, padding=1, stride=2), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))

    def forward(self, x):
        return self.head(self.features(x))


def test_pairs_equal_single_label_grad_cam_and_can_be_asked_twice():
    net = _Net().eval()
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    inferer = GradCAMInferer("features")
    with torch.no_grad():  # as inside the evaluator
        logits = inferer(x, net)
    assert not logits.requires_grad and logits.shape == (3, 5)
    samples, labels = [0, 0, 2, 1, 0], [1, 4, 3, 0, 1]
    maps = inferer.cams_for(samples, labels)
    assert maps.shape == (5, 1, 16, 16)
    ref = CapturedGradCAM(net, "features")
    for k, (i, c) in enumerate(zip(samples, labels)):
        expected, _ = ref(x[i:i + 1], class_idx=c)
        torch.testing.assert_close(maps[k], expected[0], atol=1e-5, rtol=1e-4)
    again = inferer.cams_for([2], [3])  # a second handler on the same batch
    torch.testing.assert_close(again[0], maps[2])
    assert all(len(m._forward_hooks) == 0 for m in net.modules())  # no hook left behind
    inferer.release()
    with pytest.raises(RuntimeError, match="no batch"):
        inferer.cams_for([0], [0])


def test_pairs_are_checked():
    net = _Net().eval()
    inferer = GradCAMInferer("features")
    inferer(torch.randn(2, 1, 16, 16), net)
    with pytest.raises(ValueError, match="outside the batch"):
        inferer.cams_for([2], [0])
    with pytest.raises(ValueError, match="differ in length"):
        inferer.cams_for([0, 1], [0])
