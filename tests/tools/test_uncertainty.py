"""The uncertainty score of MONAI Label's uncertainty strategy, on tiny networks (no server, no MONAI Label)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medplugin.tools import uncertainty as U


def _stripes(horizontal: bool, size: int = 16, phase: int = 0) -> torch.Tensor:
    """A (1, size, size) image of 2-pixel stripes, horizontal or vertical."""
    idx = torch.arange(size)
    line = (((idx + phase) // 2) % 2).float()
    img = line[:, None].expand(size, size) if horizontal else line[None, :].expand(size, size)
    return img[None].clone()


@pytest.fixture(scope="module")
def stripe_classifier() -> nn.Module:
    """A tiny CNN trained to tell horizontal (class 0) from vertical (class 1) stripes, any phase, with noise."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(150):
        labels = torch.randint(0, 2, (16,), generator=g)
        phases = torch.randint(0, 4, (16,), generator=g)
        x = torch.stack([_stripes(bool(lab == 0), phase=int(p)) for lab, p in zip(labels, phases)])
        x = x + 0.1 * torch.randn(x.shape, generator=g)
        loss = nn.functional.cross_entropy(net(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_the_ambiguous_image_has_the_highest_entropy(stripe_classifier):
    plan = U.tta_plan(2, flips=(-1, -2), shift=0.125)
    assert len(plan) == 1 + 2 + 4
    clear = [_stripes(True), _stripes(False), _stripes(True, phase=1), _stripes(False, phase=3)]
    blend = 0.5 * _stripes(True) + 0.5 * _stripes(False)  # half of each class: a checkerboard-like grid
    scores = []
    for img in [*clear, blend]:
        probs = U.tta_probabilities(img[None], stripe_classifier, plan)
        assert probs.shape == (1, 2) and torch.allclose(probs.sum(1), torch.ones(1))
        scores.append(U.classification_score(probs[0]))
    assert max(scores[:4]) < 0.1  # the model is sure about the clear images
    assert scores[4] > 0.3 and scores[4] > 5 * max(scores[:4])
    assert max(scores) <= math.log(2) + 1e-6


def test_classification_entropy_softmax_and_independent_findings():
    assert U.classification_score(torch.tensor([0.25, 0.25, 0.25, 0.25])) == pytest.approx(math.log(4), rel=1e-6)
    assert U.classification_score(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([0.5, 0.9, 0.0])  # three findings: summed binary entropies
    want = math.log(2) + -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert U.classification_score(p, multi_label=True) == pytest.approx(want, rel=1e-5)
    # sigmoid for independent findings, softmax over classes
    logits = torch.tensor([[0.0, 2.0]])
    assert torch.allclose(U.activate(logits, True), torch.sigmoid(logits))
    assert torch.allclose(U.activate(logits, False), torch.softmax(logits, 1))


def test_augmentations_are_undone_exactly_on_a_spatial_output():
    x = torch.randn(1, 2, 12, 10)
    for aug in U.tta_plan(2, flips=(-1, -2), shift=0.2):
        assert torch.equal(aug.invert(aug.apply(x)), x), aug.describe()
    x3 = torch.randn(1, 1, 4, 12, 10)
    for aug in U.tta_plan(3, flips=(-3,), shift=0.1, shift_axes=(-3, -2, -1)):
        assert torch.equal(aug.invert(aug.apply(x3)), x3), aug.describe()
    assert U.Augmentation(shift=((-1, 0.2),)).apply(x).equal(torch.roll(x, 2, -1))
    # a voxel-wise predictor commutes with every augmentation: the TTA mean is the plain prediction
    plan = U.tta_plan(2, flips=(-1,), shift=0.25)
    voxelwise = lambda t: torch.cat([-3 * t, 3 * t], 1)  # noqa: E731
    img = torch.rand(1, 1, 8, 8)
    mean = U.tta_probabilities(img, voxelwise, plan, spatial_output=True)
    assert torch.allclose(mean, torch.softmax(voxelwise(img), 1), atol=1e-6)


def test_bad_plans_say_what_is_wrong():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        U.tta_plan(4)
    with pytest.raises(ValueError, match=r"axis -3 is not a spatial axis of a 2D input"):
        U.tta_plan(2, flips=(-3,))
    with pytest.raises(ValueError, match=r"shift must be a fraction in \[0, 0.5\), got 0.7"):
        U.tta_plan(2, shift=0.7)
    with pytest.raises(ValueError, match="counted from the end"):
        U.Augmentation(flip=(2,))
    with pytest.raises(ValueError, match="empty plan"):
        U.tta_probabilities(torch.zeros(1, 1, 4, 4), nn.Identity(), [])


def _disc(size: int, radius: float, contrast: float, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < radius**2
    img = torch.where(inside, contrast, -contrast).float()
    return (img + noise * torch.randn(img.shape, generator=torch.Generator().manual_seed(seed)))[None, None]


def test_segmentation_scores_the_faint_noisy_organ_highest():
    predict = lambda t: torch.cat([-4 * t, 4 * t], 1)  # noqa: E731  (foreground logit: 8 x intensity)
    plan = U.tta_plan(2, shift=0.05)
    clear = U.segmentation_score(U.tta_probabilities(_disc(32, 8, 1.0), predict, plan, spatial_output=True)[0])
    faint = U.segmentation_score(U.tta_probabilities(_disc(32, 8, 0.05, 0.3), predict, plan, spatial_output=True)[0])
    assert faint > 0.3 > 0.01 > clear


def test_segmentation_score_stays_on_the_organ_whatever_the_field_of_view():
    def probs(size):  # the same organ in a small and in a large field of view: sure inside and far outside
        yy, xx = torch.meshgrid(torch.arange(size) - size / 2, torch.arange(size) - size / 2, indexing="ij")
        logit = 2.0 * (6 - (yy**2 + xx**2).sqrt())  # foreground logit, uncertain at the boundary only
        return torch.softmax(torch.stack([-logit, logit]) / 2, 0)

    small, large = probs(20), probs(80)
    box = [U.segmentation_score(p, margin=0.0) for p in (small, large)]
    whole = [float(U.entropy_map(p).mean()) for p in (small, large)]
    assert box[0] == pytest.approx(box[1], rel=1e-6)
    assert whole[0] > 3 * whole[1]  # averaged over everything, the background decides
    # nothing predicted: the whole image counts
    empty = torch.softmax(torch.full((2, 8, 8), 0.0).index_fill_(0, torch.tensor([0]), 3.0), 0)
    assert U.segmentation_score(empty) == pytest.approx(float(U.entropy_map(empty).mean()))
    with pytest.raises(ValueError, match=r"must be \(K, \*spatial\), got shape \(2,\)"):
        U.segmentation_score(torch.tensor([0.5, 0.5]))


def test_mc_dropout_samples_dropout_only_and_restores_modes():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).eval()
        x = torch.randn(2, 6)
        probs = U.mc_dropout_probabilities(x, net, passes=20)
    assert U.has_active_dropout(net)
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(1), torch.ones(2))
    with torch.no_grad():
        plain = torch.softmax(net(x), 1)
    assert not torch.allclose(probs, plain, atol=1e-4)  # the passes differed
    assert not any(m.training for m in net.modules())  # all back in evaluation mode
    with U.dropout_active(net):
        assert net[3].training and not net[1].training  # batch norm keeps its running statistics
    no_dropout = nn.Sequential(nn.Linear(6, 3), nn.Dropout(0.0))
    assert not U.has_active_dropout(no_dropout)
    with pytest.raises(ValueError, match="Sequential has no dropout layer with p > 0"):
        U.mc_dropout_probabilities(x, no_dropout)
    with pytest.raises(ValueError, match="at least 2 passes, got 1"):
        U.mc_dropout_probabilities(x, net, passes=1)
