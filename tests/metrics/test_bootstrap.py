"""Patient-level bootstrap intervals: right figures, patients kept together, shrinking, covering the truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from medplugin.metrics.bootstrap import (
    PatientBootstrap,
    auroc_figure,
    bootstrap_intervals,
    bootstrap_metric,
    ci_entries,
    format_ci,
    headline_figures,
    kappa_figure,
    macro_figure,
    mean_figure,
    rate_figures,
)


def _width(r, key="ci95"):
    lo, hi = r[key]
    return hi - lo


def test_rank_auroc_equals_sklearn_with_ties_and_resample_weights():
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.2
    s = np.round(rng.normal(size=500) + y, 1)  # many ties within and across classes
    f = auroc_figure(s, y)
    assert f(np.ones((1, 500)))[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    w = next(PatientBootstrap(rng.integers(0, 120, 500), n_resamples=5, seed=1).blocks())
    for i in range(5):
        assert f(w)[i] == pytest.approx(roc_auc_score(y, s, sample_weight=w[i]), abs=1e-12)
        rows = np.repeat(np.arange(500), w[i].astype(int))  # the same resample as repeated rows
        assert f(w)[i] == pytest.approx(roc_auc_score(y[rows], s[rows]), abs=1e-12)
    assert np.isnan(auroc_figure(s, np.zeros(500, bool))(np.ones((1, 500))))[0]


def test_images_of_one_patient_move_together():
    pid = np.repeat(np.arange(30), 4)[np.random.default_rng(0).permutation(120)]
    boot = PatientBootstrap(pid, n_resamples=300, seed=5)
    w = np.concatenate(list(boot.blocks()))
    assert w.shape == (300, 120)
    for p in range(30):
        cols = w[:, pid == p]
        assert (cols == cols[:, :1]).all()  # every image of a patient has the patient's count
    assert np.allclose(w.sum(1), 120)  # 30 patients drawn, 4 images each
    assert np.array_equal(w, np.concatenate(list(PatientBootstrap(pid, n_resamples=300, seed=5).blocks())))
    assert not np.array_equal(w, np.concatenate(list(PatientBootstrap(pid, n_resamples=300, seed=6).blocks())))
    with pytest.raises(ValueError, match="patient ids are missing at rows"):
        PatientBootstrap(["a", None, "b"])


def test_patient_level_interval_is_wider_than_image_level_when_patients_cluster():
    """Planted: 40 patients x 25 follow-up images, each patient's images all right or all wrong."""
    rng = np.random.default_rng(1)
    pid = np.repeat(np.arange(40), 25)
    correct = np.repeat(rng.random(40) < 0.7, 25).astype(float)
    fig = {"accuracy": mean_figure(correct)}
    per_patient = bootstrap_intervals(fig, pid, seed=0)["accuracy"]
    per_image = bootstrap_intervals(fig, None, n_images=1000, seed=0)["accuracy"]
    assert per_patient["value"] == per_image["value"] == correct.mean()
    # 40 independent units instead of 1,000: about sqrt(25) = 5 times wider
    assert _width(per_patient) > 3.5 * _width(per_image)


def test_intervals_shrink_as_the_test_set_grows():
    def interval(n, seed):
        rng = np.random.default_rng(seed)
        y = rng.random(n) < 0.3
        s = rng.normal(size=n) + y
        return bootstrap_intervals({"auroc": auroc_figure(s, y)}, np.arange(n) // 2, seed=seed)["auroc"]

    small, large = interval(200, 0), interval(3200, 0)
    assert _width(large) < 0.4 * _width(small)  # 16x the images: about 1/4 of the width
    for r in (small, large):
        assert r["ci95"][0] <= r["value"] <= r["ci95"][1]


def test_95_percent_intervals_cover_the_true_value_in_a_simulation():
    """200 seeded synthetic test sets of 40 patients x 3 images with a patient effect on the scores.

    The true AUROC of a random positive vs a random negative image is Phi(d / sqrt(2)) when the patient effect
    and the image noise together have variance 1; the rule ``score > d / 2`` is right with probability Phi(d / 2).
    Measured: 188/200 (AUROC) and 185/200 (accuracy) covered.
    """
    d, n_pat, per = 1.0, 40, 3
    true_auc, true_acc = norm.cdf(d / math.sqrt(2)), norm.cdf(d / 2)
    covered, covered_acc = 0, 0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        pid = np.repeat(np.arange(n_pat), per)
        y = rng.random(n_pat * per) < 0.5
        s = y * d + rng.normal(0, math.sqrt(0.5), n_pat)[pid] + rng.normal(0, math.sqrt(0.5), n_pat * per)
        right = ((s > d / 2) == y).astype(float)
        r = bootstrap_intervals({"auroc": auroc_figure(s, y), "accuracy": mean_figure(right)}, pid, seed=seed)
        covered += r["auroc"]["ci95"][0] <= true_auc <= r["auroc"]["ci95"][1]
        covered_acc += r["accuracy"]["ci95"][0] <= true_acc <= r["accuracy"]["ci95"][1]
    assert covered >= 180 and covered_acc >= 180  # >= 90% of 200 draws


def test_only_the_patient_level_interval_covers_when_images_of_a_patient_agree():
    """200 draws of 40 patients x 5 images; each patient's images are right with the patient's own probability
    (Beta(0.7, 0.3), mean 0.7): images of a patient are far from independent. Measured: 188/200 covered by the
    patient-level interval, 149/200 by the image-level one."""
    covered_patient, covered_image = 0, 0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        pid = np.repeat(np.arange(40), 5)
        right = (rng.random(200) < rng.beta(0.7, 0.3, 40)[pid]).astype(float)
        fig = {"accuracy": mean_figure(right)}
        lo, hi = bootstrap_intervals(fig, pid, seed=seed)["accuracy"]["ci95"]
        covered_patient += lo <= 0.7 <= hi
        lo, hi = bootstrap_intervals(fig, None, n_images=200, seed=seed)["accuracy"]["ci95"]
        covered_image += lo <= 0.7 <= hi
    assert covered_patient >= 180
    assert covered_image < 170


def test_macro_mean_skips_resamples_where_a_class_is_absent_and_counts_them():
    rng = np.random.default_rng(2)
    pid = np.repeat(np.arange(50), 2)
    y = np.zeros((100, 2), bool)
    y[:, 0] = rng.random(100) < 0.4
    y[[10, 11], 1] = True  # the rare class: both images of one patient (patient 5)
    s = rng.normal(size=(100, 2)) + y
    figs = headline_figures(s, y.astype(int), ["common", "rare"], "multilabel")
    res = bootstrap_intervals(figs, pid, n_resamples=500, seed=3)
    w = np.concatenate(list(PatientBootstrap(pid, n_resamples=500, seed=3).blocks()))
    drawn = int((w[:, 10] > 0).sum())  # resamples holding patient 5, i.e. a positive of the rare class
    assert 0 < drawn < 500
    assert res["rare_auroc"]["n_valid"] == drawn and res["mean_auroc"]["n_valid"] == drawn
    assert res["common_auroc"]["n_valid"] == 500
    assert res["mean_auroc"]["value"] == pytest.approx(np.mean([roc_auc_score(y[:, c], s[:, c]) for c in range(2)]))


def test_figures_match_sklearn_and_the_generic_loop():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 300)
    q = np.clip(y + rng.integers(-1, 2, 300), 0, 4)
    kap = kappa_figure(y, q, 5)
    assert kap(np.ones((1, 300)))[0] == pytest.approx(cohen_kappa_score(y, q, weights="quadratic"))
    w = next(PatientBootstrap(np.arange(300) // 3, n_resamples=3, seed=0).blocks())
    assert kap(w)[1] == pytest.approx(cohen_kappa_score(y, q, weights="quadratic", sample_weight=w[1]))
    assert kappa_figure(y, q, 5, None)(np.ones((1, 300)))[0] == pytest.approx(cohen_kappa_score(y, q))
    calls, pos = rng.random(300) < 0.4, rng.random(300) < 0.3
    rates = rate_figures(calls, pos, "x")
    one = np.ones((1, 300))
    assert rates["x_sensitivity"](one)[0] == pytest.approx((calls & pos).sum() / pos.sum())
    assert rates["x_npv"](one)[0] == pytest.approx((~calls & ~pos).sum() / (~calls).sum())
    pid = np.arange(300) // 3
    vec = bootstrap_intervals({"acc": mean_figure(y == q)}, pid, n_resamples=200, seed=9)["acc"]
    loop = bootstrap_metric(lambda a, b: float(np.mean(a == b)), q, y, pid, n_resamples=200, seed=9)
    assert loop["ci95"] == pytest.approx(vec["ci95"]) and loop["value"] == pytest.approx(vec["value"])
    assert macro_figure([mean_figure(np.ones(3)), mean_figure(np.zeros(3))])(np.ones((1, 3)))[0] == 0.5


def test_headline_figures_and_metrics_json_entries():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 240)
    p = rng.dirichlet(np.ones(3), 240) + 0.5 * np.eye(3)[y]
    p /= p.sum(1, keepdims=True)
    calls = (p > 0.4).astype(int)
    figs = headline_figures(p, y, ["a", "b", "c"], "multiclass", calls=calls, kappa="quadratic",
                            dice=rng.random(240))
    assert {"accuracy", "a_auroc", "macro_auroc", "b_sensitivity", "c_npv", "kappa", "mean_dice"} <= set(figs)
    res = bootstrap_intervals(figs, np.arange(240) // 4, n_resamples=300, seed=0)
    flat = ci_entries(res)
    k, pos = calls[:, 1].astype(bool), y == 1
    assert flat["b_sensitivity"] == pytest.approx((k & pos).sum() / pos.sum())
    assert flat["b_ppv"] == pytest.approx((k & pos).sum() / k.sum())
    assert flat["b_specificity"] == pytest.approx((~k & ~pos).sum() / (~pos).sum())
    assert flat["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    for k in figs:
        lo, hi = flat[f"{k}_ci95"]
        assert lo <= flat[k] <= hi, k
    with pytest.raises(ValueError, match="exactly one label per image"):
        headline_figures(p, np.ones((240, 3)), ["a", "b", "c"], "multiclass")


def test_table_format():
    assert format_ci(0.9123, [0.8841, 0.9362]) == "0.912 (0.884-0.936)"
    assert format_ci(-0.012, [-0.0304, 0.0051]) == "-0.012 (-0.030 to 0.005)"
    assert format_ci(0.5, None) == "0.500" and format_ci(float("nan"), [0.1, 0.2]) == "n/a"
    assert format_ci(0.5, [float("nan"), float("nan")]) == "0.500"
    assert format_ci(0.91234, [0.9, 0.92], digits=2) == "0.91 (0.90-0.92)"
