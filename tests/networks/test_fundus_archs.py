"""SE-ResNet-50 and EfficientNet-B0 in the classifier registry (the fundus bundle's alternatives)."""

import pytest
import torch

from medplugin.networks import cam_layer, classifier, input_normalization
from medplugin.visualize.cam import CapturedGradCAM as GradCAM


@pytest.mark.parametrize("arch", ["seresnet50", "efficientnet_b0"])
def test_new_archs_classify_and_give_a_cam(arch):
    torch.manual_seed(0)
    net = classifier(arch, in_channels=5, num_classes=2).eval()
    x = torch.rand(2, 5, 64, 64)
    assert net(x).shape == (2, 2)
    maps, logits = GradCAM(net, cam_layer(arch))(x)
    assert maps.shape == (2, 1, 64, 64) and logits.shape == (2, 2)
    mean, std = input_normalization(arch, 5)
    assert mean[3:] == [0.0, 0.0] and std[3:] == [1.0, 1.0] and len(mean) == 5


@pytest.mark.parametrize("arch, head", [("seresnet50", "last_linear."), ("efficientnet_b0", "_fc.")])
def test_local_weights_load_rgb_kernels_kept_and_extra_channels_zero(tmp_path, arch, head):
    torch.manual_seed(1)
    src = classifier(arch, in_channels=3, num_classes=1000)
    path = tmp_path / f"{arch}.pth"
    torch.save(src.state_dict(), path)
    net = classifier(arch, in_channels=5, num_classes=2, pretrained=str(path), freeze_backbone=True)
    first = "layer0.conv1.weight" if arch == "seresnet50" else "_conv_stem.weight"
    w = net.state_dict()[first]
    assert torch.equal(w[:, :3], src.state_dict()[first]) and not w[:, 3:].any()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(head) for n in trainable)
