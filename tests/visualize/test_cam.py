import numpy as np
import pytest
import torch
from torch import nn

from medplugin.inferers import GradCAMInferer
from medplugin.visualize import CapturedGradCAM, overlay_cam


def _planted(n, size=32, seed=0):
    """Class 1: a bright 6x6 square somewhere; class 0: a dark one. Returns images, labels, square centres."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.3
    y = torch.randint(0, 2, (n,), generator=g)
    centres = torch.randint(5, size - 5, (n, 2), generator=g)
    for i in range(n):
        r, c = centres[i].tolist()
        x[i, 0, r - 3:r + 3, c - 3:c + 3] = 1.0 if y[i] == 1 else -0.5
    return x, y, centres


def _net():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 2),
    )


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    net = _net()
    x, y, _ = _planted(160)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


@pytest.mark.integration  # `trained` trains a CNN to the planted-lesion task
def test_network_learned_the_task(trained):
    x, y, _ = _planted(128, seed=1)
    trained.eval()
    acc = (trained(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.95


@pytest.mark.integration  # `trained` trains a CNN to the planted-lesion task
def test_gradcam_peaks_inside_the_planted_lesion(trained):
    x, y, centres = _planted(64, seed=2)
    maps, logits = CapturedGradCAM(trained, "6")(x, class_idx=1)  # the last conv's ReLU
    assert maps.shape == (64, 1, 32, 32) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    hits = 0
    positives = (y == 1).nonzero().flatten().tolist()
    for i in positives:
        r, c = np.unravel_index(int(maps[i, 0].argmax()), (32, 32))
        cr, cc = centres[i].tolist()
        hits += abs(r - cr) <= 4 and abs(c - cc) <= 4
    assert hits / len(positives) >= 0.9


@pytest.mark.integration  # `trained` trains a CNN to the planted-lesion task
def test_hooks_are_removed_and_mode_restored(trained):
    trained.train()
    n_hooks = sum(len(m._forward_hooks) for m in trained.modules())
    CapturedGradCAM(trained, "6")(torch.rand(2, 1, 32, 32))
    assert sum(len(m._forward_hooks) for m in trained.modules()) == n_hooks
    assert trained.training
    with pytest.raises(ValueError, match="layer 'nope' not found"):
        CapturedGradCAM(trained, "nope")


@pytest.mark.integration  # `trained` trains a CNN to the planted-lesion task
def test_inferer_gives_the_same_maps_under_no_grad(trained):
    trained.eval()
    x, _, _ = _planted(8, seed=3)
    expected, logits = CapturedGradCAM(trained, "6")(x)
    inf = GradCAMInferer("6")
    with torch.no_grad():  # as inside a MONAI evaluator
        out = inf(x, trained)
        maps = inf.cams()
    torch.testing.assert_close(out, logits)
    torch.testing.assert_close(maps, expected)
    with pytest.raises(RuntimeError, match="no batch to explain"):
        inf.cams()


def test_gradcam_works_on_a_frozen_backbone():
    from medplugin.networks import classifier

    net = classifier("resnet18", in_channels=1, num_classes=2, freeze_backbone=True).eval()
    maps, _ = CapturedGradCAM(net, "layer4")(torch.rand(1, 1, 64, 64))
    assert maps.shape == (1, 1, 64, 64) and torch.isfinite(maps).all()


def test_overlay_is_rgb_at_image_resolution():
    img = np.random.default_rng(0).random((50, 70)) * 255
    rgb = overlay_cam(img, np.ones((7, 7)) * 0.5)
    assert rgb.shape == (50, 70, 3) and rgb.dtype == np.uint8
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay_cam(img, np.ones((7, 7)), alpha=2)


def test_inferer_warns_once_when_the_cam_layer_is_one_cell(caplog):
    """ResNet-18's layer4 is 1x1 at 32 px (the smoke overlay's size): every map is flat, all zeros, and a peak taken
    with argmax is pixel (0, 0). The inferer says so once, naming the layer and sizes; at 64 px (2x2) it does not."""
    from medplugin.networks import cam_layer, classifier

    torch.manual_seed(0)
    net = classifier("resnet18", in_channels=1, num_classes=4, pretrained="none").eval()
    inferer = GradCAMInferer(cam_layer("resnet18"))
    with caplog.at_level("WARNING", logger="medplugin.inferers"), torch.no_grad():
        inferer(torch.randn(3, 1, 32, 32), net)
        maps = inferer.cams()
        inferer(torch.randn(3, 1, 32, 32), net)
    assert maps.shape == (3, 1, 32, 32) and not maps.any()
    warned = [r.getMessage() for r in caplog.records if r.name == "medplugin.inferers"]
    assert warned == ["Grad-CAM layer 'layer4' outputs a 1x1 map for 32x32 inputs: every map is flat (all zeros), "
                      "nothing is localised; use a larger image_size or an earlier cam_layer."]
    caplog.clear()
    inferer = GradCAMInferer("layer4")
    with caplog.at_level("WARNING", logger="medplugin.inferers"), torch.no_grad():
        inferer(torch.randn(3, 1, 64, 64), net)
        maps = inferer.cams()
    assert not [r for r in caplog.records if r.name == "medplugin.inferers"]
    assert all(m.max() > 0 for m in maps)


def _box_net(pool: nn.Module | None = None):
    """Two stride-2 box filters (3x3, padding 1), or ``pool`` between them: a cell of layer "3" sums a window of
    the input centred on pixel 4 * j (box convolutions) or 4 * j + 1.5 (2x2 average pooling)."""
    first = pool or nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    second = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False) if pool is None else nn.AvgPool2d(2)
    net = nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1 / 9)
        net[-1].weight.copy_(torch.tensor([[-1.0], [1.0]]))
        net[-1].bias.zero_()
    return net.eval()


def test_cells_are_measured_where_their_receptive_fields_are_centred():
    from medplugin.networks import classifier
    from medplugin.visualize import cell_centres

    assert cell_centres(_box_net(), "3", (1, 1, 32, 40)) == ((0.0, 4.0), (0.0, 4.0))
    assert cell_centres(_box_net(nn.AvgPool2d(2)), "3", (1, 1, 32, 32)) == ((1.5, 4.0), (1.5, 4.0))
    net = classifier("resnet18", in_channels=1, num_classes=2, pretrained="none")
    net.train()
    state = torch.random.get_rng_state()
    assert cell_centres(net, "layer2", (2, 1, 64, 64)) == ((0.0, 8.0), (0.0, 8.0))
    assert cell_centres(net, "layer4", (2, 1, 64, 64)) == ((0.0, 32.0), (0.0, 32.0))  # its field is wider than 64 px
    assert net.training and torch.equal(torch.random.get_rng_state(), state)  # mode and random state untouched
    dense = classifier("densenet121", in_channels=1, num_classes=14, pretrained="none")
    # a DenseNet's transitions (2x2 average pooling) move the centres: 4j, 8j + 2, 16j + 6, 32j + 14
    assert cell_centres(dense, "features.denseblock3", (1, 1, 96, 96)) == ((6.0, 16.0), (6.0, 16.0))
    assert cell_centres(dense, "features.denseblock4", (1, 1, 224, 224)) == ((14.0, 32.0), (14.0, 32.0))


@pytest.mark.parametrize("dot", [(8, 12), (20, 4), (13, 18)])
def test_gradcam_peak_lies_on_the_planted_dot_not_half_a_stride_off(dot):
    """A stride-4 map upsampled as if its cells tiled the input evenly puts a ResNet-like cell (centred on pixel
    4 * j) 1.5 px down and right of where it looks; the measured grid puts the peak on the dot (within the
    half-cell a dot between two cells' centres is from the nearer one)."""
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, dot[0], dot[1]] = 1.0
    maps, _ = CapturedGradCAM(_box_net(), "3")(x, class_idx=1)
    rows, cols = np.nonzero(maps[0, 0].numpy() >= float(maps.max()))
    assert abs(rows.mean() - dot[0]) <= 1.0 and abs(cols.mean() - dot[1]) <= 1.0, (rows, cols)


class _PerSlice(nn.Module):
    """A 2.5D network as MRNet is one: the box net's convolutions run on every slice of ``(B, 1, S, H, W)``, the
    strongest slice decides."""

    def __init__(self):
        super().__init__()
        self.net = _box_net()

    def forward(self, x):
        b, s = x.shape[0], x.shape[2]
        f = self.net[:4](x.reshape(b * s, 1, *x.shape[3:]))  # (B * S, 1, h, w): one map per slice
        return self.net[-1](f.amax((2, 3)).reshape(b, s).amax(1, keepdim=True))


@pytest.mark.parametrize("dot", [(2, 8, 12), (0, 20, 4), (3, 13, 18)])
def test_a_2p5d_maps_peak_lies_on_the_planted_dot_in_its_slice(dot):
    """Per-slice maps of a 2.5D network are put on the input by the backbone's measured in-plane grid, as 2-D maps
    are (they were resized as if the cells tiled each slice evenly: a knee demo's map at layer3, stride 16, landed
    7.5 px down and right of the ligament it looked at), one map per slice."""
    from medplugin.networks.mrnet import MRNet
    from medplugin.visualize import cell_centres

    assert cell_centres(MRNet("resnet18", 2), "backbone.layer3", (1, 1, 10, 64, 64)) == ((0.0, 16.0), (0.0, 16.0))
    assert cell_centres(_PerSlice(), "net.3", (1, 1, 4, 32, 32)) == ((0.0, 4.0), (0.0, 4.0))
    x = torch.zeros(1, 1, 4, 32, 32)
    x[0, 0, dot[0], dot[1], dot[2]] = 1.0
    maps, _ = CapturedGradCAM(_PerSlice(), "net.3")(x, class_idx=1)
    assert maps.shape == (1, 1, 4, 32, 32)
    slices, rows, cols = np.nonzero(maps[0, 0].numpy() >= float(maps.max()))
    assert set(slices) == {dot[0]}
    assert abs(rows.mean() - dot[1]) <= 1.0 and abs(cols.mean() - dot[2]) <= 1.0, (rows, cols)


@pytest.mark.parametrize("cells,size", [((4, 5), (32, 40)), ((3, 4, 5), (12, 32, 40))])
def test_grid_of_evenly_tiling_cells_gives_the_plain_resize(cells, size):
    """Cells centred on their tiles (offset (stride - 1) / 2) are what bilinear/trilinear ``align_corners=False``
    assumes: the two agree, in 2D and 3D, borders included."""
    from medplugin.visualize.cam import grad_cam_maps

    torch.manual_seed(0)
    act = torch.rand(2, 3, *cells, requires_grad=True)
    logits = act.flatten(2).mean(2)  # (2, 3): every cell counts
    grid = tuple(((n / c - 1) / 2, n / c) for n, c in zip(size, cells))
    kept = grad_cam_maps(logits, act, [0, 1], [2, 1], size, retain_graph=True, grid=grid)
    plain = grad_cam_maps(logits, act, [0, 1], [2, 1], size)
    torch.testing.assert_close(kept, plain, atol=1e-5, rtol=0)
