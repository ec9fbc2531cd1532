"""The Mahalanobis out-of-distribution gate (Lee et al. 2018) and the pooled-feature hook of our classifiers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medplugin.errors import BadInputError
from medplugin.gate import (
    InputGate,
    MahalanobisOOD,
    PooledFeatures,
    collect_features,
    fit_ood_statistics,
    pooled_layer,
)


def _gaussian_classes(rng: np.random.Generator, n: int, shift: float = 0.0,
                      between: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Three classes in 64 dimensions with a shared, correlated covariance (fixed by seed 0); ``between``: the
    same noise around the centre of the three class means instead of around one of them."""
    base = np.random.default_rng(0)
    means = base.normal(0, 3, size=(3, 64))
    mix = base.normal(0, 1, size=(64, 64)) / 8
    labels = rng.integers(0, 3, size=n)
    centres = np.broadcast_to(means.mean(axis=0), (n, 64)) if between else means[labels]
    x = centres + rng.normal(size=(n, 64)) @ (np.eye(64) + mix) + shift
    return x, labels


def test_mahalanobis_flags_a_shifted_distribution_and_keeps_held_out_inputs():
    rng = np.random.default_rng(1)
    train, y = _gaussian_classes(rng, 900)
    val, _ = _gaussian_classes(rng, 400)
    test, _ = _gaussian_classes(rng, 1000)
    shifted, _ = _gaussian_classes(rng, 1000, shift=1.0)
    ood = MahalanobisOOD.fit(train, y, classes=["a", "b", "c"])
    assert ood.classes == ["a", "b", "c"] and 0.0 <= ood.shrinkage <= 1.0
    ood.calibrate(val, percentile=99)
    kept = ood.in_distribution(test).mean()
    flagged = 1 - ood.in_distribution(shifted).mean()
    assert kept >= 0.95, kept
    assert flagged >= 0.95, flagged
    # features between the classes, near none of them: class-conditional Gaussians (Lee et al.) flag them
    between = _gaussian_classes(rng, 1000, between=True)[0]
    assert 1 - ood.in_distribution(between).mean() >= 0.95
    # one pooled Gaussian (a model without labels) keeps the held-out inputs and flags the shifted ones too
    pooled = MahalanobisOOD.fit(train)
    pooled.calibrate(val)
    assert pooled.classes is None and pooled.in_distribution(test).mean() >= 0.95
    assert 1 - pooled.in_distribution(shifted).mean() >= 0.95


def _findings(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    """Features of images with the findings ``y`` (N, 3 multi-hot): a base, plus one effect per finding present
    (fixed by seed 0), plus correlated noise."""
    base = np.random.default_rng(0)
    mu0, effects, mix = base.normal(0, 1, 64) + 4, base.normal(0, 1.5, (3, 64)), base.normal(0, 1, (64, 64)) / 8
    return mu0 + y @ effects + rng.normal(size=(len(y), 64)) @ (np.eye(64) + mix)


def test_multi_label_means_follow_the_findings_and_keep_rare_pairs_in_scope():
    """A multi-label model's means: one per set of findings seen in training, from the additive fit, so a pair
    with 4 training images gets a mean nearer its true one than those 4 images' average; held-out pairs stay in
    scope and features pushed off in a new direction are flagged. Features are L2-normalised (Mahalanobis++)."""
    rng = np.random.default_rng(5)
    sets = [(0, 0, 0)] * 300 + [(1, 0, 0)] * 80 + [(0, 1, 0)] * 80 + [(0, 0, 1)] * 80 + [(1, 1, 0)] * 4 \
        + [(1, 0, 1)] * 4 + [(0, 1, 1)] * 4
    y = np.array(sets, dtype=float)
    train = _findings(rng, y)
    ood = MahalanobisOOD.fit(train, y, classes=["a", "b", "c"])
    assert sorted(ood.classes) == ["a", "a|b", "a|c", "b", "b|c", "c", "none"]
    base = np.random.default_rng(0)
    true_ab = base.normal(0, 1, 64) + 4 + base.normal(0, 1.5, (3, 64))[:2].sum(axis=0)
    true_ab /= np.linalg.norm(true_ab)
    fitted = ood.means[ood.classes.index("a|b")]
    pair = train[(y == (1, 1, 0)).all(axis=1)]
    average = (pair / np.linalg.norm(pair, axis=1, keepdims=True)).mean(axis=0)
    assert np.linalg.norm(fitted - true_ab) < 0.6 * np.linalg.norm(average - true_ab)

    val_y = np.array([(0, 0, 0)] * 50 + [(1, 0, 0)] * 15 + [(0, 1, 0)] * 15 + [(0, 0, 1)] * 15 + [(1, 1, 0)] * 2
                     + [(0, 1, 1)] * 2, dtype=float)
    ood.calibrate(_findings(rng, val_y))
    pairs = _findings(rng, np.array([(1, 1, 0), (1, 0, 1), (0, 1, 1)] * 400, dtype=float))
    assert ood.in_distribution(pairs).mean() >= 0.95
    away = _findings(rng, np.zeros((500, 3))) + 4 * rng.normal(size=64)
    assert 1 - ood.in_distribution(away).mean() >= 0.95
    with pytest.raises(ValueError, match="4 class names for 3 label columns"):
        MahalanobisOOD.fit(train, y, classes=["a", "b", "c", "d"])


def test_with_fewer_than_99_validation_images_the_threshold_still_flags_about_one_percent():
    """34 validation images (the chest demo's): their largest score, which 1 / 35 = 2.9% of in-distribution inputs
    exceed, is not the 99th percentile; the log-normal tail puts the threshold near it. Over 200 draws of the
    validation images: the mean share of 20,000 held-out inputs flagged is about 1% (not 2.9%), and a shifted
    distribution is still flagged."""
    rng = np.random.default_rng(3)
    train, y = _gaussian_classes(rng, 900)
    ood = MahalanobisOOD.fit(train, y)
    held_out = _gaussian_classes(rng, 20000)[0]
    shifted = _gaussian_classes(rng, 2000, shift=1.0)[0]
    flagged, largest, caught = [], [], []
    for _ in range(200):
        val = _gaussian_classes(rng, 34)[0]
        ood.calibrate(val)
        assert ood.threshold >= ood.score(val).max()
        flagged.append(1 - ood.in_distribution(held_out).mean())
        largest.append((ood.score(held_out) > ood.score(val).max()).mean())
        caught.append(1 - ood.in_distribution(shifted).mean())
    assert 0.005 <= np.mean(flagged) <= 0.015, np.mean(flagged)
    assert np.mean(largest) >= 0.02  # the old rule: the largest score
    assert np.mean(caught) >= 0.95
    assert ood.threshold_note.startswith("34 validation images, fewer than the 99 the 99th percentile needs: the "
                                         "threshold is that percentile of a log-normal fitted to their scores")
    # 99 images: the conformal quantile (here the largest of 99 scores), no fit
    val = _gaussian_classes(rng, 99)[0]
    assert ood.calibrate(val) == ood.score(val).max() and ood.threshold_note is None


def test_statistics_round_trip_through_model_json_and_a_file(tmp_path):
    rng = np.random.default_rng(2)
    train, y = _gaussian_classes(rng, 300)
    ood = MahalanobisOOD.fit(train, y, feature_layer="fc")
    ood.calibrate(_gaussian_classes(rng, 200)[0])
    block = ood.save(tmp_path)
    meta = json.loads(json.dumps({"arch": "resnet50", "ood": block}))  # model.json holds the block
    assert meta["ood"]["file"] == "ood.npz" and meta["ood"]["feature_dim"] == 64 and meta["ood"]["n_val"] == 200
    assert meta["ood"]["reference"].startswith("Lee et al. 2018")
    back = MahalanobisOOD.load(meta["ood"], tmp_path)
    probe = _gaussian_classes(rng, 50, shift=0.5)[0]
    assert np.allclose(back.score(probe), ood.score(probe), rtol=1e-4)  # float32 storage
    assert back.threshold == ood.threshold and back.classes == ood.classes
    # statistics are of L2-normalised features; a block written before that (no feature_normalization) is scored
    # on raw features, as it was fitted
    assert meta["ood"]["feature_normalization"] == "l2" and back.normalize
    old = {k: v for k, v in meta["ood"].items() if k != "feature_normalization"}
    assert not MahalanobisOOD.load(old, tmp_path).normalize

    gate = InputGate.from_config({}, model_json=meta, model_dir=tmp_path)
    far = gate.check(features=probe[0] + 50)
    (reason,) = far.reasons
    assert reason.startswith("out-of-distribution score ") and "(99th percentile of validation images)" in reason
    assert far.ood_score > ood.threshold and gate.check(features=train[0]).in_scope

    (tmp_path / "ood.npz").write_bytes((tmp_path / "ood.npz").read_bytes()[:-8] + b"garbage!")
    with pytest.raises(BadInputError, match=r"ood\.npz: the OOD statistics do not match model.json"):
        MahalanobisOOD.load(meta["ood"], tmp_path)
    with pytest.raises(BadInputError, match=r"ood\.npz: the OOD statistics named in model.json are missing"):
        MahalanobisOOD.load(meta["ood"], tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"classes \['c'\] have no training features"):
        MahalanobisOOD.fit(train[y < 2], y[y < 2], classes=["a", "b", "c"])


def test_a_tiny_network_on_synthetic_images_flags_another_modality(tmp_path):
    """Pooled features of a small (untrained) ResNet-18: fitted on synthetic OCT B-scans, the gate keeps held-out
    B-scans and flags synthetic chest radiographs."""
    from medplugin.data.synthetic.chest_xray import synthetic_chest_xray
    from medplugin.data.synthetic.oct import synthetic_oct_bscan
    from medplugin.networks import classifier

    torch.manual_seed(0)
    net = classifier("resnet18", in_channels=1, num_classes=4)
    rng = np.random.default_rng(0)

    def octs(n):
        labels = rng.integers(0, 4, size=n)
        images = [synthetic_oct_bscan(int(k), size=(64, 64), rng=rng)[0] for k in labels]
        return torch.as_tensor(np.stack(images)[:, None] / 255.0, dtype=torch.float32), labels

    def batches(x, y):
        return [{"image": x[i:i + 32], "label": torch.as_tensor(y[i:i + 32])} for i in range(0, len(x), 32)]

    train_x, train_y = octs(128)
    val_x, val_y = octs(80)
    test_x, test_y = octs(80)
    chest = torch.as_tensor(np.stack([synthetic_chest_xray(64, rng=int(s))["image"] for s in range(40)])[:, None]
                            / 255.0, dtype=torch.float32)
    feats, labels = collect_features(net, batches(train_x, train_y), label_key="label")
    assert feats.shape == (128, 512) and labels.shape == (128,)
    # what the end of training does: fit on the training images, threshold on the validation images, save
    block = fit_ood_statistics(net, batches(train_x, train_y), batches(val_x, val_y), tmp_path, label_key="label",
                               classes=["CNV", "DME", "DRUSEN", "NORMAL"])
    assert block["class_conditional"] and block["feature_layer"] == "fc" and block["n_train"] == 128
    ood = MahalanobisOOD.load(block, tmp_path)
    kept = ood.in_distribution(collect_features(net, batches(test_x, test_y))[0]).mean()
    flagged = 1 - ood.in_distribution(collect_features(net, [{"image": chest}])[0]).mean()
    assert kept >= 0.95, kept
    assert flagged >= 0.95, flagged
    assert net.training  # collect_features restored the mode it found


@pytest.mark.parametrize(("arch", "dim", "size"), [
    ("resnet18", 512, 64), ("resnet50", 2048, 64), ("densenet121", 1024, 64), ("inception_v3", 2048, 80),
    ("seresnet50", 2048, 64), ("efficientnet_b0", 1280, 64),
])
def test_pooled_features_of_every_classifier(arch, dim, size):
    from medplugin.networks import classifier

    torch.manual_seed(0)
    net = classifier(arch, in_channels=1, num_classes=3).eval()
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        reference = net(x)
    capture = PooledFeatures(net)
    feats, logits = capture(x)
    assert feats.shape == (2, dim)
    assert torch.allclose(logits, reference, atol=1e-5)  # the hook changed nothing
    with torch.no_grad():
        head = net.head[2:] if arch == "inception_v3" else capture.module  # Inception: the 64-unit layer, then fc
        assert torch.allclose(head(feats), logits, atol=1e-5)  # the head maps them to the logits
    assert not capture.module._forward_pre_hooks  # removed after the call


@pytest.mark.parametrize(("arch", "transfer", "layer"), [
    ("mrnet", "fine_tune", "head"), ("mrnet", "feature_extraction", "head"), ("resnet3d18", "fine_tune", "fc")])
def test_pooled_features_of_the_knee_classifiers(arch, transfer, layer):
    from medplugin.networks import knee_classifier
    from medplugin.networks.knee import extract_features

    torch.manual_seed(0)
    net = knee_classifier(arch, "resnet18", num_classes=2, transfer=transfer).eval()
    assert pooled_layer(net) == layer
    x = torch.rand(1, 1, 4, 48, 48)
    with PooledFeatures(net) as capture:
        with torch.no_grad():
            net(x)
    assert capture.module._forward_pre_hooks == {} or capture._handle is None
    with torch.no_grad():
        assert torch.allclose(capture.features, extract_features(net, x), atol=1e-5)
