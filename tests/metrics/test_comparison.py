"""DeLong's test (fast algorithm) against the O(n^2) definition and pROC's published example; paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from medplugin.metrics.bootstrap import auroc_figure, mean_figure
from medplugin.metrics.comparison import (
    bootstrap_p_value,
    delong_covariance,
    delong_test,
    midranks,
    paired_bootstrap,
)

# pROC's aSAH data set (Turck et al. 2010, 113 patients with aneurysmal subarachnoid haemorrhage; shipped with
# the R package pROC): outcome Poor = 1, the S100B level and the WFNS grade (an ordinal score: many ties).
ASAH_POOR = [
    0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0,
    0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0,
    0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0,
    0,
]
ASAH_S100B = [
    0.13, 0.14, 0.1, 0.04, 0.13, 0.1, 0.47, 0.16, 0.18, 0.1, 0.12, 0.1, 0.44, 0.71,
    0.04, 0.08, 0.49, 0.04, 0.07, 0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11,
    0.13, 0.19, 0.05, 0.16, 0.41, 0.14, 0.34, 0.35, 0.48, 0.09, 0.96, 0.25, 0.5, 0.46,
    0.16, 0.07, 0.43, 0.45, 0.11, 0.08, 0.09, 0.86, 0.52, 0.08, 0.06, 0.13, 2.07, 0.1,
    0.14, 0.15, 0.07, 0.06, 0.77, 0.05, 0.09, 0.3, 0.03, 0.09, 0.04, 0.23, 0.7, 0.09,
    0.27, 0.71, 0.08, 0.26, 0.08, 0.16, 0.09, 0.13, 0.1, 0.08, 0.11, 0.33, 0.11, 0.28,
    0.07, 0.1, 0.32, 0.22, 0.07, 0.05, 0.24, 0.38, 0.1, 0.15, 0.08, 0.14, 0.1, 0.07,
    0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74, 0.15, 0.47, 0.17, 0.44, 0.15, 0.5,
    0.48,
]
ASAH_WFNS = [
    1, 1, 1, 1, 3, 2, 5, 4, 1, 2, 5, 2, 5, 5, 1, 2, 5, 2, 2, 5, 2, 1, 1, 1, 1, 2, 1, 2,
    1, 1, 3, 4, 2, 1, 4, 5, 4, 1, 4, 2, 5, 5, 1, 1, 2, 4, 1, 1, 2, 5, 5, 2, 1, 2, 5, 1,
    2, 2, 2, 1, 5, 1, 1, 2, 5, 2, 1, 4, 5, 2, 4, 4, 1, 4, 1, 2, 1, 4, 2, 1, 2, 3, 2, 4,
    2, 1, 4, 5, 1, 1, 5, 4, 2, 2, 1, 1, 1, 3, 1, 2, 5, 2, 2, 5, 5, 5, 2, 4, 4, 5, 1, 1,
    1,
]


def _delong_by_definition(scores, positives):
    """DeLong et al. 1988 written out: psi over all positive-negative pairs (1, 1/2 for a tie, 0)."""
    x, y = scores[:, positives], scores[:, ~positives]
    m, n = x.shape[1], y.shape[1]
    psi = (x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])  # (K, m, n)
    v10, v01 = psi.mean(2), psi.mean(1)  # structural components of each positive / each negative
    aucs = psi.mean((1, 2))
    s10 = (v10 - aucs[:, None]) @ (v10 - aucs[:, None]).T / (m - 1)
    s01 = (v01 - aucs[:, None]) @ (v01 - aucs[:, None]).T / (n - 1)
    return aucs, s10 / m + s01 / n


def test_midranks_are_average_ranks():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    assert np.array_equal(midranks(x), rankdata(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_equals_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(90) < 0.4
    a = np.round(rng.normal(size=90) + y, 1)  # ties
    b = np.round(0.6 * a + rng.normal(size=90), 0)  # heavy ties, correlated with a
    c = rng.normal(size=90)
    s = np.stack([a, b, c])
    aucs, cov = delong_covariance(s, y)
    ref_aucs, ref_cov = _delong_by_definition(s, y)
    assert aucs == pytest.approx(ref_aucs, abs=1e-12)
    assert aucs == pytest.approx([roc_auc_score(y, r) for r in s], abs=1e-12)
    assert cov == pytest.approx(ref_cov, rel=1e-9, abs=1e-15)


def test_delong_reproduces_procs_published_example():
    """pROC's documentation: roc.test(roc(outcome, s100b), roc(outcome, wfns)) gives Z = -2.209, p = 0.02718,
    with AUCs 0.7314 and 0.8237; var(roc(outcome, s100b)) = 0.002668682 (DeLong; Stata's roctab gives the
    same standard error, 0.05165929). Our difference is B - A, so Z has the opposite sign."""
    y = np.array(ASAH_POOR)
    assert (y.size, int(y.sum())) == (113, 41)
    aucs, cov = delong_covariance(np.array([ASAH_S100B, ASAH_WFNS], float), y)
    assert aucs == pytest.approx([0.7314, 0.8237], abs=5e-5)
    assert cov[0, 0] == pytest.approx(0.002668682, rel=1e-6)
    res = delong_test(ASAH_S100B, ASAH_WFNS, y)
    assert res["z"] == pytest.approx(2.209, abs=5e-4) and res["p"] == pytest.approx(0.02718, abs=5e-6)
    assert res["difference"] == pytest.approx(0.8237 - 0.7314, abs=1e-4)


def test_delong_refuses_too_few_cases_and_unequal_lengths():
    with pytest.raises(ValueError, match="at least 2 positive and 2 negative"):
        delong_test([0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [1, 0, 0])
    with pytest.raises(ValueError, match="same cases"):
        delong_test([0.1, 0.2, 0.3, 0.4], [0.3, 0.2, 0.1], [1, 0, 0, 1])
    same = delong_test([0.1, 0.4, 0.3, 0.8], [0.1, 0.4, 0.3, 0.8], [0, 1, 0, 1])
    assert same["p"] == 1.0 and same["difference"] == 0.0


def test_paired_bootstrap_of_identical_and_of_different_models():
    rng = np.random.default_rng(0)
    pid = np.arange(400) // 2
    y = rng.random(400) < 0.4
    a = y + rng.normal(size=400)
    b = 2.0 * y + rng.normal(size=400)
    fa = {"auroc": auroc_figure(a, y), "acc": mean_figure((a > 0.5) == y)}
    same = paired_bootstrap(fa, fa, pid, n_resamples=300, seed=1)
    assert same["auroc"]["difference"] == 0.0 and same["auroc"]["ci95"] == [0.0, 0.0] and same["auroc"]["p"] == 1.0
    fb = {"auroc": auroc_figure(b, y), "acc": mean_figure((b > 1.0) == y)}
    diff = paired_bootstrap(fa, fb, pid, n_resamples=1000, seed=1)["auroc"]
    assert diff["difference"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
    assert 0 < diff["ci95"][0] <= diff["difference"] <= diff["ci95"][1] and diff["p"] < 0.01
    with pytest.raises(ValueError, match="no figure in common"):
        paired_bootstrap({"x": fa["acc"]}, {"y": fa["acc"]}, pid)


def test_bootstrap_p_value_counts_the_smaller_tail():
    assert bootstrap_p_value([0.1] * 99) == pytest.approx(2 / 100)
    assert bootstrap_p_value([-1.0] * 50 + [1.0] * 49) == 1.0
    assert bootstrap_p_value([-1.0] * 10 + [1.0] * 89) == pytest.approx(2 * 11 / 100)
    assert np.isnan(bootstrap_p_value([np.nan, np.nan]))
