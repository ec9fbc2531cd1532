"""MRNet (2.5D, shared 2D backbone) and the 3D ResNet-18 helper."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch

from medplugin.errors import BadInputError
from medplugin.networks.mrnet import MRNet, resnet3d18

tv_models = pytest.importorskip("torchvision.models")

# AlexNet's features (11x11/4 stem and three 3x3/2 max pools) need H, W >= 63; the others run at 32.
SIZES = {"alexnet": 64, "resnet18": 32, "densenet121": 32, "vgg16": 32}
FEATURES = {"alexnet": 256, "resnet18": 512, "densenet121": 1024, "vgg16": 512}


@pytest.fixture
def seeded():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


@pytest.mark.parametrize("backbone", list(SIZES))
def test_forward_shapes_each_backbone(backbone, seeded):
    hw = SIZES[backbone]
    net = MRNet(backbone, num_classes=4).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 3, hw, hw)).shape == (2, 4)
        assert net(torch.rand(2, 3, hw, hw)).shape == (2, 4)  # (B, S, H, W) too
        assert net.features(torch.rand(2, 3, hw, hw)).shape == (2, FEATURES[backbone])
    assert net.num_features == FEATURES[backbone]
    net.get_submodule(net.cam_layer)  # exists


def test_volume_batch_equals_single_volumes_and_slice_counts_may_differ_between_batches(seeded):
    net = MRNet("resnet18", num_classes=2).eval()
    x = torch.rand(2, 1, 4, 32, 32)
    with torch.no_grad():
        both = net(x)
        one = torch.cat([net(x[i : i + 1]) for i in range(2)])
        other_s = net(torch.rand(1, 1, 7, 32, 32))
    torch.testing.assert_close(both, one, rtol=1e-4, atol=1e-5)
    assert other_s.shape == (1, 2)


def test_features_are_max_over_slices_of_pooled_slice_features(seeded):
    net = MRNet("resnet18").eval()
    x = torch.rand(1, 1, 3, 32, 32)
    with torch.no_grad():
        per_slice = torch.stack([net.features(x[:, :, i : i + 1]) for i in range(3)], 0)
        torch.testing.assert_close(net.features(x), per_slice.amax(0), rtol=1e-5, atol=1e-6)


def test_adapt_mode_gives_first_conv_one_channel(seeded):
    net = MRNet("densenet121", slice_channels="adapt").eval()
    assert net.backbone.features.conv0.in_channels == 1
    with torch.no_grad():
        assert net(torch.rand(1, 2, 32, 32)).shape == (1, 1)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="backbone must be one of .*'resnet50'"):
        MRNet("resnet50")
    with pytest.raises(ValueError, match="slice_channels must be 'repeat' or 'adapt', got 'rgb'"):
        MRNet("resnet18", slice_channels="rgb")
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        MRNet("resnet18", num_classes=0)
    net = MRNet("resnet18")
    with pytest.raises(ValueError, match=r"\(B, 1, S, H, W\).*\(2, 3, 4, 32, 32\)"):
        net(torch.rand(2, 3, 4, 32, 32))
    with pytest.raises(ValueError, match=r"got shape \(32, 32\)"):
        net(torch.rand(32, 32))


def _save(tmp_path, name, state):
    path = tmp_path / name
    torch.save(state, path)
    return path


def _tv_state(backbone):
    return getattr(tv_models, backbone)(weights=None).state_dict()


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121", "alexnet", "vgg16"])
def test_pretrained_file_is_copied_into_backbone(backbone, tmp_path, seeded):
    state = _tv_state(backbone)
    if backbone in ("alexnet", "vgg16"):  # keep the file small: drop the big classifier layers, keep the last
        state = {k: v for k, v in state.items() if k.startswith(("features.", "classifier.6."))}
    for v in state.values():  # make the file distinguishable from any fresh initialisation
        if v.is_floating_point():
            v.normal_()
    path = _save(tmp_path, f"{backbone}.pth", state)
    net = MRNet(backbone, num_classes=2, pretrained=path)
    own = net.state_dict()
    compared = 0
    for k, v in state.items():
        if backbone in ("alexnet", "vgg16") and k.startswith("features."):
            key = "backbone." + k[len("features."):]  # torchvision features.N -> backbone.N
        elif (backbone == "densenet121" and k.startswith("features.")) or (
            backbone == "resnet18" and not k.startswith("fc.")
        ):
            key = "backbone." + k
        else:
            continue
        assert torch.equal(own[key], v), key
        compared += 1
    assert compared == sum(1 for k in own if k.startswith("backbone."))


def test_pretrained_first_conv_adapted_to_one_channel(tmp_path, seeded):
    state = _tv_state("resnet18")
    path = _save(tmp_path, "r18.pth", state)
    net = MRNet("resnet18", pretrained=path, slice_channels="adapt")
    torch.testing.assert_close(net.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(net.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_pretrained_densenet_old_zoo_key_names(tmp_path, seeded):
    state = _tv_state("densenet121")
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()}
    assert any(".norm.1." in k for k in old)
    net = MRNet("densenet121", pretrained=_save(tmp_path, "d121_old.pth", {"state_dict": old}))
    key = "features.denseblock1.denselayer1.norm1.weight"
    assert torch.equal(net.state_dict()["backbone." + key], state[key])


def test_pretrained_wrong_architecture_is_refused(tmp_path):
    path = _save(tmp_path, "r18.pth", _tv_state("resnet18"))
    with pytest.raises(BadInputError, match=r"r18\.pth: not alexnet weights in torchvision layout"):
        MRNet("alexnet", pretrained=path)
    # a file with only some of the backbone's tensors is refused, not half-loaded
    partial = {k: v for k, v in _tv_state("resnet18").items() if not k.startswith("layer4")}
    with pytest.raises(BadInputError, match=r"not complete resnet18 weights.*layer4"):
        MRNet("resnet18", pretrained=_save(tmp_path, "partial.pth", partial))


def test_pretrained_unsafe_or_corrupt_file_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    unsafe = tmp_path / "unsafe.pth"
    with open(unsafe, "wb") as f:
        pickle.dump({"weight": Evil()}, f)
    torch.save({"conv1.weight": torch.zeros(1), "obj": Evil()}, tmp_path / "unsafe2.pth")
    with pytest.raises(BadInputError, match="unsafe2.pth: refused to load"):
        MRNet("resnet18", pretrained=tmp_path / "unsafe2.pth")
    with pytest.raises(BadInputError, match="unsafe.pth"):
        MRNet("resnet18", pretrained=unsafe)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(BadInputError, match="junk.pth: (not a readable PyTorch weights file|refused to load)"):
        MRNet("resnet18", pretrained=tmp_path / "junk.pth")
    with pytest.raises(BadInputError, match="missing.pth: weights file not found"):
        MRNet("resnet18", pretrained=tmp_path / "missing.pth")


def test_freeze_backbone(seeded):
    net = MRNet("resnet18", num_classes=2, freeze_backbone=True)
    assert all(not p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    net.train()
    assert not net.backbone.training and net.head.training  # batch-norm statistics stay fixed
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    head_before = net.head.weight.detach().clone()
    torch.nn.functional.cross_entropy(net(torch.rand(2, 1, 3, 32, 32)), torch.tensor([0, 1])).backward()
    opt.step()
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(net.head.weight, head_before)


def test_cam_layer_hook_gives_per_slice_grad_cam(seeded):
    net = MRNet("resnet18", num_classes=2).eval()
    acts, grads = {}, {}
    layer = net.get_submodule(net.cam_layer)
    handles = [
        layer.register_forward_hook(lambda m, i, o: acts.update(a=o)),  # hooks must return None
        layer.register_full_backward_hook(lambda m, gi, go: grads.update(g=go[0])),
    ]
    try:
        b, s = 2, 5
        logits = net(torch.rand(b, 1, s, 32, 32))
        logits[:, 1].sum().backward()
    finally:
        for h in handles:
            h.remove()
    a, g = acts["a"], grads["g"]
    assert a.shape == (b * s, 512, 1, 1) and g.shape == a.shape
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))  # Grad-CAM, one map per slice
    assert MRNet.per_slice(cam, b).shape == (b, s, 1, 1)


def test_resnet3d18_forward_and_pretrained(tmp_path, seeded):
    net = resnet3d18(in_channels=1, num_classes=3)
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 8, 32, 32)).shape == (1, 3)
    source = resnet3d18(in_channels=1, num_classes=400).state_dict()
    for v in source.values():
        if v.is_floating_point():
            v.normal_()
    path = _save(tmp_path, "r3d18.pth", {"state_dict": {"module." + k: v for k, v in source.items()}})
    loaded = resnet3d18(in_channels=2, num_classes=3, pretrained=path).state_dict()
    assert torch.equal(loaded["layer3.1.conv2.weight"], source["layer3.1.conv2.weight"])
    assert loaded["conv1.weight"].shape[1] == 2  # adapted first convolution
    assert loaded["fc.weight"].shape == (3, 512)
    path2 = _save(tmp_path, "r18_2d.pth", {"features.0.weight": torch.zeros(3)})
    with pytest.raises(BadInputError, match="r18_2d.pth: not 3D ResNet-18 weights"):
        resnet3d18(pretrained=path2)
    with pytest.raises(ValueError, match="in_channels and num_classes must be >= 1, got 0 and 2"):
        resnet3d18(in_channels=0)


def _blob_task(n, rng, s=4, hw=32):
    """Noisy volumes; class 1 has one bright 5x5 blob in one random slice at a random place."""
    x = rng.normal(0.0, 0.3, (n, 1, s, hw, hw)).astype(np.float32)
    y = np.arange(n) % 2
    for i in np.nonzero(y)[0]:
        k, r, c = rng.integers(0, s), rng.integers(2, hw - 7), rng.integers(2, hw - 7)
        x[i, 0, k, r : r + 5, c : c + 5] += 1.5
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.mark.integration  # trains an MRNet to a known task
def test_tiny_mrnet_learns_a_known_task(seeded, record_property):
    """A class-1 volume has a bright blob in one of its slices; max over slices must find it."""
    rng = np.random.default_rng(0)
    x_train, y_train = _blob_task(64, rng)
    x_test, y_test = _blob_task(40, rng)
    net = MRNet("resnet18", num_classes=2, slice_channels="adapt")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    net.train()
    for _ in range(40):
        idx = torch.from_numpy(rng.choice(64, 8, replace=False))
        loss = torch.nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x_test).argmax(1) == y_test).float().mean().item()
    elapsed = time.perf_counter() - start
    record_property("accuracy", acc)
    record_property("seconds", elapsed)
    assert acc >= 0.9, f"held-out accuracy {acc:.3f} after {elapsed:.1f} s"
