"""Predictive uncertainty of a trained network on one study: test-time augmentation or MC dropout, then entropy.

The score that MONAI Label's uncertainty strategy (:mod:`medplugin.tools.monailabel_activelearning`) ranks
unlabelled studies by. Several stochastic or augmented passes of the network give class probabilities; their mean
is the predictive distribution and its entropy the uncertainty (total predictive uncertainty: what the model does
not know and what the image leaves open):

- **Test-time augmentation** (TTA; Wang et al., "Aleatoric uncertainty estimation with test-time augmentation for
  medical image segmentation with convolutional neural networks", Neurocomputing 2019): the identity, each flip
  the task allows and small circular shifts along the in-plane axes; a spatial output is mapped back onto the input
  grid before averaging.
- **MC dropout** (Gal and Ghahramani, "Dropout as a Bayesian approximation", ICML 2016): the network's dropout
  layers stay active (batch normalisation stays in evaluation mode) for several passes of the same input. Only a
  network with dropout of probability > 0 can do this (:func:`has_active_dropout`).

Entropy (natural log, nats): of the softmax distribution over classes, or, for independent findings (sigmoid), the
sum of the findings' binary entropies. A classification study scores the entropy of its mean prediction; a
segmentation study the mean voxel entropy inside the bounding box of the predicted foreground (grown by a margin),
the whole image where nothing is predicted (:func:`segmentation_score`).

Nothing here imports MONAI Label: the functions run on any ``predict`` callable (a network, or a bundle's inferer
around one).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "Augmentation", "tta_plan", "tta_probabilities", "mc_dropout_probabilities", "has_active_dropout",
    "dropout_active", "entropy_map", "classification_score", "segmentation_score", "activate",
]

EPS = 1e-8


@dataclass(frozen=True)
class Augmentation:
    """One test-time augmentation of a batched input ``(B, C, *spatial)``, invertible on a spatial output.

    Args:
        flip: spatial axes to mirror, as tensor axes counted from the end (``-1``: the last axis, image columns).
        shift: ``{axis: fraction}``, as a tuple of pairs: circular shift along a tensor axis (counted from the end)
            by ``round(fraction * size)`` pixels. A circular shift loses no pixel and is undone exactly.
    """

    flip: tuple[int, ...] = ()
    shift: tuple[tuple[int, float], ...] = ()

    def __post_init__(self):
        for a in (*self.flip, *(a for a, _ in self.shift)):
            if not isinstance(a, int) or a >= 0:
                raise ValueError(f"augmentation axes are counted from the end (-1, -2, ...), got {a!r}.")

    def _offsets(self, x: torch.Tensor) -> tuple[list[int], list[int]]:
        dims = [a for a, _ in self.shift]
        return [int(round(f * x.shape[a])) for a, f in self.shift], dims

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The augmented input (spatial axes of ``x``: the last ones)."""
        if self.flip:
            x = torch.flip(x, self.flip)
        offsets, dims = self._offsets(x)
        return torch.roll(x, offsets, dims) if dims else x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """A spatial output of the augmented input mapped back onto the original grid."""
        offsets, dims = self._offsets(y)
        if dims:
            y = torch.roll(y, [-o for o in offsets], dims)
        return torch.flip(y, self.flip) if self.flip else y

    def describe(self) -> str:
        parts = [f"flip{list(self.flip)}"] if self.flip else []
        parts += [f"shift[{a}]{f:+.3f}" for a, f in self.shift]
        return "+".join(parts) or "identity"


def tta_plan(spatial_dims: int, flips: Sequence[int] = (), shift: float = 0.05,
             shift_axes: Sequence[int] | None = None) -> list[Augmentation]:
    """The passes of a test-time augmentation: the identity, one pass per flip, and ``+/-shift`` along each axis.

    Args:
        spatial_dims: 2 or 3 (the input's spatial axes are its last ``spatial_dims`` axes).
        flips: axes (counted from the end) whose mirror image is a plausible study of the same kind, e.g.
            ``(-1,)`` for left/right eyes. Leave out what changes the meaning (a radiograph's left and right).
        shift: fraction of the axis size moved in each shift pass (0: no shift passes).
        shift_axes: axes to shift (default: the last two, the in-plane axes of a 2D image or a slice stack).

    Returns:
        ``1 + len(flips) + 2 * len(shift_axes)`` augmentations (the identity first).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    if not 0 <= shift < 0.5:
        raise ValueError(f"shift must be a fraction in [0, 0.5), got {shift!r}.")
    shift_axes = (-2, -1) if shift_axes is None else tuple(shift_axes)
    for a in (*flips, *shift_axes):
        if not -spatial_dims <= a < 0:
            raise ValueError(f"axis {a!r} is not a spatial axis of a {spatial_dims}D input "
                             f"(use -1 .. -{spatial_dims}).")
    plan = [Augmentation()] + [Augmentation(flip=(a,)) for a in flips]
    if shift > 0:
        plan += [Augmentation(shift=((a, s * shift),)) for a in shift_axes for s in (1, -1)]
    return plan


def activate(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Probabilities from logits ``(B, C, ...)``: sigmoid for independent labels (or one channel), else softmax."""
    if multi_label or logits.shape[1] == 1:
        return torch.sigmoid(logits.float())
    return torch.softmax(logits.float(), dim=1)


def tta_probabilities(x: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor],
                      plan: Sequence[Augmentation], multi_label: bool = False, spatial_output: bool = False
                      ) -> torch.Tensor:
    """Mean probabilities over the passes of a test-time augmentation.

    Args:
        x: batched input ``(B, C, *spatial)``.
        predict: the network (or an inferer around it) giving logits ``(B, K)`` or ``(B, K, *spatial)``.
        plan: the augmentations (:func:`tta_plan`), one pass each.
        multi_label: sigmoid per channel instead of a softmax over channels.
        spatial_output: the logits lie on the input grid (segmentation): each pass is mapped back before averaging.

    Returns:
        The mean probabilities, the shape of one pass's logits.
    """
    if not plan:
        raise ValueError("a test-time augmentation needs at least one pass, got an empty plan.")
    total = None
    with torch.no_grad():
        for aug in plan:
            p = activate(predict(aug.apply(x)), multi_label)
            if spatial_output:
                p = aug.invert(p)
            total = p if total is None else total + p
    return total / len(plan)


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def has_active_dropout(network: nn.Module) -> bool:
    """Whether ``network`` has a dropout layer with probability > 0 (what MC dropout needs)."""
    return any(isinstance(m, _DROPOUT) and float(m.p) > 0 for m in network.modules())


@contextlib.contextmanager
def dropout_active(network: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, ``network``'s dropout layers sample (training mode) while every other layer, batch
    normalisation included, stays as it was; each module's mode is restored on exit."""
    modes = {m: m.training for m in network.modules()}
    try:
        for m in network.modules():
            if isinstance(m, _DROPOUT):
                m.train()
        yield network
    finally:
        for m, mode in modes.items():
            m.train(mode)


def mc_dropout_probabilities(x: torch.Tensor, network: nn.Module, passes: int = 8, multi_label: bool = False,
                             predict: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Mean probabilities over ``passes`` forward passes with ``network``'s dropout active (MC dropout).

    Args:
        x: batched input ``(B, C, *spatial)``.
        network: a network with dropout (:func:`has_active_dropout`); its modes are restored afterwards.
        passes: number of stochastic passes (at least 2).
        multi_label: sigmoid per channel instead of a softmax.
        predict: how to run it (default: ``network`` itself; e.g. a sliding-window inferer around it).
    """
    if int(passes) < 2:
        raise ValueError(f"MC dropout needs at least 2 passes, got {passes!r}.")
    if not has_active_dropout(network):
        raise ValueError(f"{type(network).__name__} has no dropout layer with p > 0: MC dropout would repeat one "
                         "deterministic prediction; use test-time augmentation.")
    predict = predict or network
    total = None
    with torch.no_grad(), dropout_active(network):
        for _ in range(int(passes)):
            p = activate(predict(x), multi_label)
            total = p if total is None else total + p
    return total / int(passes)


def entropy_map(probs: torch.Tensor, multi_label: bool = False, dim: int = 0) -> torch.Tensor:
    """Entropy (nats) along the class axis ``dim`` of probabilities: ``-sum p log p`` of a distribution, or, for
    independent labels, the sum of each label's binary entropy."""
    p = probs.float().clamp(EPS, 1.0)
    if multi_label:
        q = (1 - probs.float()).clamp(EPS, 1.0)
        return -(p * p.log() + q * q.log()).sum(dim)
    return -(p * p.log()).sum(dim)


def classification_score(probs: torch.Tensor, multi_label: bool = False) -> float:
    """Entropy (nats) of one study's mean class probabilities ``(K,)`` (or ``(1, K)``). At most ``log K`` for a
    distribution over K classes, ``K log 2`` for K independent findings."""
    probs = probs.reshape(-1)
    if probs.numel() < 1:
        raise ValueError("no class probabilities to score.")
    return float(entropy_map(probs[:, None], multi_label, dim=0).sum())


def foreground(probs: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Predicted foreground of mean probabilities ``(K, *spatial)``: the arg-max is not channel 0 (background), or,
    for independent labels, any channel at 0.5 or above."""
    if multi_label or probs.shape[0] == 1:
        return (probs >= 0.5).any(0)
    return probs.argmax(0) != 0


def segmentation_score(probs: torch.Tensor, multi_label: bool = False, margin: float = 0.05) -> float:
    """Mean voxel entropy (nats) of one study's mean probabilities ``(K, *spatial)`` inside the predicted
    foreground's bounding box grown by ``margin`` (a fraction of each axis) on every side; the whole image where no
    voxel is predicted foreground.

    The box keeps the score on the structure being segmented and its boundary, where the model decides:
    averaged over the whole image, the many easy background voxels dilute it, so the score would follow the field of
    view (how much background surrounds the organ) more than how hard the organ is.
    """
    if probs.ndim < 3:
        raise ValueError(f"segmentation probabilities must be (K, *spatial), got shape {tuple(probs.shape)}.")
    if not 0 <= margin < 0.5:
        raise ValueError(f"margin must be a fraction in [0, 0.5), got {margin!r}.")
    ent = entropy_map(probs, multi_label, dim=0)
    fg = foreground(probs, multi_label)
    if not bool(fg.any()):
        return float(ent.mean())
    index = []
    for axis, size in enumerate(fg.shape):
        other = tuple(a for a in range(fg.ndim) if a != axis)
        hits = torch.nonzero(fg.any(dim=other) if other else fg).reshape(-1)
        grow = int(math.ceil(margin * size))
        index.append(slice(max(0, int(hits.min()) - grow), min(size, int(hits.max()) + 1 + grow)))
    return float(ent[tuple(index)].mean())
