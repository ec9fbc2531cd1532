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


# (arch, freeze_until, the state-dict prefixes that must freeze: written here, independently of stages())
FREEZE_CASES = [
    ("resnet18", "layer3", ("conv1.", "bn1.", "layer1.", "layer2.")),
    ("densenet121", "denseblock2", ("features.conv0.", "features.norm0.", "features.denseblock1.",
                                    "features.transition1.")),
]


@pytest.mark.parametrize("arch, layer, frozen_prefixes", FREEZE_CASES, ids=[c[0] for c in FREEZE_CASES])
def test_freeze_until_freezes_exactly_the_layers_before_it_and_training_leaves_them_unchanged(
        arch, layer, frozen_prefixes):
    from medplugin.training import build_optimizer

    torch.manual_seed(0)
    net = classifier(arch, in_channels=1, num_classes=3, freeze_until=layer)
    frozen = {n for n, _ in net.named_parameters() if n.startswith(frozen_prefixes)}
    assert frozen and {n for n, p in net.named_parameters() if not p.requires_grad} == frozen
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # the bundle's optimizer (frozen parameters left out) and a plain one given every parameter, weight decay on
    optimizers = [build_optimizer("adam", net.parameters(), 1e-2, weight_decay=1e-2),
                  torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.1)]
    net.train()
    x, y = torch.rand(4, 1, 64, 64), torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        for opt in optimizers:
            opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        for opt in optimizers:
            opt.step()
    after = net.state_dict()
    for k, v in before.items():  # weights and batch-norm statistics (running mean/var, batches tracked)
        if k.startswith(frozen_prefixes):
            assert torch.equal(after[k], v), f"{k} changed although frozen"
    trained = [k for k in before if not k.startswith(frozen_prefixes) and k.endswith("weight")]
    assert all(not torch.equal(after[k], before[k]) for k in trained)  # the named layer and those after it train
    stats = [k for k in before if not k.startswith(frozen_prefixes) and k.endswith("running_mean")]
    assert stats and all(not torch.equal(after[k], before[k]) for k in stats)
    norms = [m for n, m in net.named_modules() if f"{n}.".startswith(frozen_prefixes)
             and isinstance(m, torch.nn.BatchNorm2d)]
    assert net.training and norms and not any(m.training for m in norms)  # frozen batch norms stay in eval mode


def test_freeze_until_names_the_valid_layers_and_refuses_random_weights():
    with pytest.raises(ValueError, match=r"freeze_until='layer9' is not a layer of ResNetClassifier after its first: "
                                         r"choose one of \['bn1', 'layer1', 'layer2', 'layer3', 'layer4', 'fc'\]"):
        classifier("resnet18", freeze_until="layer9")
    with pytest.raises(ValueError, match=r"choose one of \['features.norm0', 'features.denseblock1'"):
        classifier("densenet121", freeze_until="conv0")  # the first layer: nothing before it to freeze
    with pytest.raises(ValueError, match="freeze_until='layer3' with freeze_backbone true: give one of them"):
        classifier("resnet18", freeze_until="layer3", freeze_backbone=True)
    with pytest.raises(ValueError, match="pretrained='none' with freeze_until layer3: frozen layers keep their random"):
        classifier("resnet18", freeze_until="layer3", pretrained="none")
    # inception_v3's frozen-base default gives way to freeze_until; trunk layers by short or full name
    net = classifier("inception_v3", freeze_until="Mixed_6a")
    assert net.frozen_prefixes[-1] == "base.Mixed_5d" and not net.freeze_backbone
    assert classifier("inception_v3", freeze_until="base.Mixed_6a").frozen_prefixes == net.frozen_prefixes
    assert all(p.requires_grad for n, p in net.named_parameters() if n.startswith(("base.Mixed_6a.", "head.")))
