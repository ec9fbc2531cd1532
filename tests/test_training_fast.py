"""prepare_network (channels-last, in-place compile) and DevicePrepareBatch keep the model and its numbers."""

from __future__ import annotations

import torch

from medplugin.networks import classifier
from medplugin.training import DevicePrepareBatch, prepare_network
from medplugin.transforms import BatchRandAugment


def test_channels_last_and_compile_keep_the_module_its_keys_and_its_outputs():
    torch.manual_seed(0)
    net = classifier("resnet18", in_channels=1, num_classes=4).eval()
    keys = list(net.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = net(x)
    fast = prepare_network(net, "cpu", channels_last=True, compile="eager")
    assert fast is net and list(fast.state_dict()) == keys  # checkpoints and CAM layers are unchanged
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_prepare_batch_copies_augments_and_formats():
    batch = {"image": torch.rand(3, 1, 16, 16), "label": torch.tensor([0, 1, 2])}
    img, lab = DevicePrepareBatch()(batch, torch.device("cpu"), non_blocking=True)
    assert torch.equal(img, batch["image"]) and torch.equal(lab, batch["label"])
    aug = BatchRandAugment(rotate_degrees=0, hflip=True, zoom=None, intensity=0, prob=1.0)
    img, _ = DevicePrepareBatch(aug, channels_last=True)(batch, "cpu")
    assert torch.equal(img, batch["image"].flip(-1)) and img.is_contiguous(memory_format=torch.channels_last)
    img, lab = DevicePrepareBatch()({"image": batch["image"]}, "cpu")
    assert lab is None
