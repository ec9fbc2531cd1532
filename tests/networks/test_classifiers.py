import pickle

import pytest
import torch
import torchvision

from medplugin.errors import BadInputError
from medplugin.networks import cam_layer, classifier, input_normalization
from medplugin.networks.pretrained import read_state_dict


@pytest.mark.parametrize("arch, tv_builder", [
    ("resnet50", torchvision.models.resnet50),
    ("densenet121", torchvision.models.densenet121),
])
def test_torchvision_imagenet_file_maps_onto_every_backbone_tensor(tmp_path, arch, tv_builder):
    tv = tv_builder()
    path = tmp_path / f"{arch}.pth"
    torch.save(tv.state_dict(), path)
    net = classifier(arch, in_channels=3, num_classes=4, pretrained=str(path))
    own, src = net.state_dict(), tv.state_dict()
    if arch == "resnet50":
        torch.testing.assert_close(own["layer4.2.conv3.weight"], src["layer4.2.conv3.weight"])
        torch.testing.assert_close(own["conv1.weight"], src["conv1.weight"])
    else:
        torch.testing.assert_close(own["features.denseblock4.denselayer16.layers.conv2.weight"],
                                   src["features.denseblock4.denselayer16.conv2.weight"])
    # the head is new: 4 classes, not ImageNet's 1000
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 4)


def test_grayscale_first_conv_is_the_sum_of_rgb_kernels(tmp_path):
    tv = torchvision.models.resnet50()
    path = tmp_path / "r50.pth"
    torch.save(tv.state_dict(), path)
    net = classifier("resnet50", in_channels=1, num_classes=2, pretrained=str(path))
    torch.testing.assert_close(net.conv1.weight, tv.conv1.weight.sum(1, keepdim=True))


def test_inception_transfer_is_frozen_with_a_new_head(tmp_path):
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inc.pth"
    torch.save(tv.state_dict(), path)
    net = classifier("inception_v3", in_channels=1, num_classes=4, pretrained=str(path))
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    # the Cell paper's head: global average pooling, a 64-unit ReLU layer, the 4-way output
    assert trainable == ["head.2.weight", "head.2.bias", "head.5.weight", "head.5.bias"]
    assert net.head[2].out_features == 64 and isinstance(net.head[3], torch.nn.ReLU)
    torch.testing.assert_close(net.base.Mixed_7c.branch1x1.conv.weight, tv.Mixed_7c.branch1x1.conv.weight)
    net.train()
    assert not net.base.Conv2d_1a_3x3.bn.training  # frozen batch-norm statistics stay frozen
    net.eval()
    assert net(torch.rand(1, 1, 299, 299)).shape == (1, 4)


def test_freeze_backbone_trains_only_the_head():
    net = classifier("resnet50", in_channels=1, num_classes=3, freeze_backbone=True)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    before = net.bn1.running_mean.clone()
    net.train()
    net(torch.rand(2, 1, 64, 64) * 5)
    torch.testing.assert_close(net.bn1.running_mean, before)


def test_wrong_weights_file_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "dn.pth"
    torch.save(torchvision.models.densenet121().state_dict(), path)
    with pytest.raises(ValueError, match="no tensor of the weights file matched"):
        classifier("resnet50", pretrained=str(path))
    with pytest.deprecated_call(match="pretrained_path is deprecated"):  # the old name still reads a file
        classifier("densenet121", num_classes=3, pretrained_path=str(path))
    with pytest.raises(ValueError, match="not both"):
        classifier("densenet121", pretrained="none", pretrained_path=str(path))
    with pytest.raises(ValueError, match="unknown arch 'vit'"):
        classifier("vit")


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(BadInputError, match="refused to load"):
        read_state_dict(path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(BadInputError, match="empty"):
        read_state_dict(tmp_path / "empty.pt")


def test_registry_keeps_input_conventions_together():
    mean, std = input_normalization("resnet50", 1)
    assert mean == [pytest.approx(0.449)] and std == [pytest.approx(0.226)]
    # torchvision's Inception-v3 weights expect [-1, 1]: (x - 0.5) / 0.5 on the [0, 1] scale, in every channel
    assert input_normalization("inception_v3", 1) == ([0.5], [0.5])
    assert input_normalization("inception_v3", 3) == ([0.5] * 3, [0.5] * 3)
    assert len(input_normalization("densenet121", 3)[0]) == 3
    assert cam_layer("resnet50") == "layer4" and cam_layer("inception_v3") == "base.Mixed_7c"
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        input_normalization("resnet50", 2)
