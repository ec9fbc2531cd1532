"""Fundus lesion candidates and their annotation, on synthetic fundus photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplugin.data.synthetic.fundus import synthetic_fundus
from medplugin.transforms import AnnotateCandidates, LesionCandidates, estimate_disc_and_fovea


def _chw(d):
    return np.ascontiguousarray(d["image"].transpose(2, 0, 1))


def _match(cands: np.ndarray, fundus: dict, tol: float) -> tuple[int, int, int]:
    """(planted, found within tol with the right polarity, unmatched candidates), one-to-one."""
    planted = [(r, c, -1.0) for r, c, _ in fundus["dark"]] + [(r, c, 1.0) for r, c, _ in fundus["bright"]]
    used = np.zeros(len(cands), bool)
    hit = 0
    for r, c, pol in planted:
        if not len(cands):
            break
        dist = np.hypot(cands[:, 0] - r, cands[:, 1] - c)
        dist[(cands[:, 3] != pol) | used] = np.inf
        j = int(np.argmin(dist))
        if dist[j] <= tol:
            used[j] = True
            hit += 1
    return len(planted), hit, int((~used).sum())


# ------------------------------------------------------------------------------------------ detection

@pytest.mark.parametrize(
    "use_fovea, max_fp_per_lesion",
    # measured on these 4 images: fovea given -> recall 1.0, 0.08 false per planted lesion;
    # no fovea filter (whole retina, vessels and disc rim included) -> recall 1.0, about 0.5 false per lesion
    [(True, 0.25), (False, 0.8)],
)
def test_candidates_find_planted_lesions(use_fovea, max_fp_per_lesion):
    total = [0, 0, 0]
    for seed in range(4):
        f = synthetic_fundus(256, n_dark=6, n_bright=5, n_blotch=1, rng=seed, side="left" if seed % 2 else "right")
        finder = LesionCandidates(max_fovea_distance=2.0 if use_fovea else None)
        cands = finder(_chw(f), mask=f["mask"], fovea=f["fovea"] if use_fovea else None, disc=f["disc"])
        assert cands.shape[1] == 5 and cands.dtype == np.float32
        assert set(np.unique(cands[:, 3])) <= {-1.0, 1.0}
        assert np.all((cands[:, 4] >= 0) & (cands[:, 4] <= 1))
        total = [a + b for a, b in zip(total, _match(cands, f, tol=3.0))]
    planted, hit, false = total
    assert hit / planted >= 0.9, total
    assert false / planted <= max_fp_per_lesion, total


def test_candidates_radius_and_fovea_filter():
    f = synthetic_fundus(256, n_dark=4, n_bright=3, n_blotch=1, rng=7)
    img = _chw(f)
    cands = LesionCandidates()(img, mask=f["mask"], fovea=f["fovea"], disc=f["disc"])
    # a blotch (radius 5-7 px) gets a larger radius than the microaneurysms (2-4 px)
    blotch = f["dark"][0]
    j = np.argmin(np.hypot(cands[:, 0] - blotch[0], cands[:, 1] - blotch[1]))
    assert cands[j, 2] >= 4
    # every kept candidate is within 2 disc diameters of the fovea
    dd = f["mask"].sum() ** 0.5 * 2 / np.pi**0.5 / 6
    assert np.all(np.hypot(cands[:, 0] - f["fovea"][0], cands[:, 1] - f["fovea"][1]) <= 2 * dd + 1e-3)
    # a fovea far away removes everything
    far = LesionCandidates(max_fovea_distance=0.2)(img, mask=f["mask"], fovea=(20.0, 20.0))
    assert far.shape == (0, 5)
    # torch in, torch out, same values
    ct = LesionCandidates()(torch.as_tensor(img), mask=torch.as_tensor(f["mask"]), fovea=f["fovea"], disc=f["disc"])
    assert isinstance(ct, torch.Tensor)
    np.testing.assert_allclose(ct.numpy(), cands)


def test_disc_and_fovea_estimate():
    for seed in range(3):
        f = synthetic_fundus(192, rng=seed, side="right" if seed % 2 else "left")
        disc, fovea = estimate_disc_and_fovea(_chw(f).astype(np.float32), f["mask"])
        dd = f["disc_diameter"]
        assert np.hypot(disc[0] - f["disc"][0], disc[1] - f["disc"][1]) < 0.25 * dd
        assert np.hypot(fovea[0] - f["fovea"][0], fovea[1] - f["fovea"][1]) < 0.6 * dd


# ----------------------------------------------------------------------------------- radial symmetry

def test_annotate_draw_and_channels():
    img = np.full((3, 64, 64), 100.0, np.float32)
    cands = np.array([[20, 20, 3, -1, 0.9], [40, 45, 2, 1, 0.5]], np.float32)
    drawn = AnnotateCandidates("draw", thickness=1)(img, cands)
    assert drawn.shape == (3, 64, 64)
    assert tuple(drawn[:, 20, 25]) == (0.0, 255.0, 255.0)  # dark: cyan ring at radius 3 + 2
    assert tuple(drawn[:, 40, 49]) == (0.0, 0.0, 255.0)  # bright: blue ring at radius 2 + 2
    assert tuple(drawn[:, 20, 20]) == (100.0, 100.0, 100.0)  # centre untouched
    st = AnnotateCandidates("channels")(img, cands)
    assert st.shape == (5, 64, 64)
    assert st[3, 20, 20] == pytest.approx(255.0) and st[4, 20, 20] < 1.0
    assert st[4, 40, 45] == pytest.approx(255.0) and st[3, 40, 45] < 1.0
    assert st[3, 20, 23] == pytest.approx(255.0 * np.exp(-0.5), rel=1e-4)  # sigma = radius
    stt = AnnotateCandidates("channels")(torch.as_tensor(img), torch.as_tensor(cands))
    assert isinstance(stt, torch.Tensor)
    np.testing.assert_allclose(stt.numpy(), st)
    assert AnnotateCandidates("channels")(img, np.zeros((0, 5))).shape == (5, 64, 64)
    with pytest.raises(ValueError, match=r"mode must be 'draw' or 'channels', got 'paint'"):
        AnnotateCandidates("paint")
    with pytest.raises(ValueError, match=r"candidates must be an \(N, 5\) array .* got shape \(5,\)"):
        AnnotateCandidates()(img, np.zeros(5))
