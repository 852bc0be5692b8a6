"""benchmarks/confidence.py against values worked out by hand."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "confidence.py"


@pytest.fixture(scope="module")
def ci():
    spec = importlib.util.spec_from_file_location("confidence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_wilson_interval_by_hand(ci):
    # 5 of 10, z = 1.96: centre (0.5 + z^2/20) / (1 + z^2/10) = 0.5;
    # half-width z sqrt(0.025 + z^2/400) / (1 + z^2/10) = 1.96 * 0.18602 / 1.38415 = 0.26340
    w = ci.wilson_interval(5, 10)
    assert (w["low"], w["high"]) == pytest.approx((0.23660, 0.76340), abs=1e-5)
    # 0 of 10: low 0, high (z^2/n) / (1 + z^2/n) = 0.38415 / 1.38415 = 0.27753
    w = ci.wilson_interval(0, 10)
    assert w["low"] == pytest.approx(0.0, abs=1e-12) and w["high"] == pytest.approx(0.27753, abs=1e-5)
    # 30 of 128: p = 0.234375; centre (p + z^2/256) / (1 + z^2/128) = 0.249381 / 1.030011 = 0.242115;
    # half = z sqrt(0.179443/128 + z^2/65536) / 1.030011 = 1.96 * sqrt(0.00146052) / 1.030011
    #      = 1.96 * 0.038217 / 1.030011 = 0.072722
    w = ci.wilson_interval(30, 128)
    assert (w["low"], w["high"]) == pytest.approx((0.169393, 0.314837), abs=2e-5)
    with pytest.raises(ValueError, match="successes <= trials"):
        ci.wilson_interval(11, 10)


def test_bootstrap_of_two_values_covers_the_exact_resampling_distribution(ci):
    # data [0, 1], n = 2: resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5th and 97.5th percentiles are 0 and 1
    out = ci.bootstrap_interval([0.0, 1.0], resamples=4000, seed=1)
    assert (out["estimate"], out["low"], out["high"], out["n"]) == (0.5, 0.0, 1.0, 2)
    constant = ci.bootstrap_interval([0.3] * 7, resamples=200)
    assert constant["low"] == pytest.approx(0.3) and constant["high"] == pytest.approx(0.3)


def test_bootstrap_width_of_a_proportion_matches_the_normal_approximation(ci):
    # 60 ones in 200: the mean's standard error is sqrt(0.3 * 0.7 / 200) = 0.032404, so the
    # 95% interval is about 0.3 +- 1.96 * 0.032404 = [0.2365, 0.3635]
    data = np.array([1.0] * 60 + [0.0] * 140)
    out = ci.bootstrap_interval(data, resamples=4000, seed=3)
    assert out["estimate"] == pytest.approx(0.3)
    assert out["low"] == pytest.approx(0.2365, abs=0.012) and out["high"] == pytest.approx(0.3635, abs=0.012)


def test_paired_ratio_resamples_pairs_together(ci):
    # second = 2 x first in every pair: every resample's ratio is exactly 2
    first = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    out = ci.ratio_of_means_paired(first, [2 * f for f in first], resamples=500)
    assert out["estimate"] == 2.0 and out["low"] == pytest.approx(2.0) and out["high"] == pytest.approx(2.0)
    # by hand: on 2 of 4, either 3 of 4 -> 1.5
    assert ci.ratio_of_means_paired([1, 1, 0, 0], [1, 1, 1, 0], resamples=10)["estimate"] == pytest.approx(1.5)


def test_two_sample_ratio_by_hand_and_degenerate_samples(ci):
    out = ci.ratio_of_means_two_samples([1.0, 1.0, 1.0], [0.5, 0.5], resamples=300)
    assert (out["estimate"], out["low"], out["high"], out["n"]) == (2.0, 2.0, 2.0, [3, 2])
    # a denominator that resamples to 0 gives no ratio: those resamples are dropped, not infinite
    out = ci.ratio_of_means_two_samples([1.0, 0.0], [1.0, 0.0], resamples=2000, seed=5)
    assert math.isfinite(out["high"]) and out["low"] >= 0.0


# ---- issue 24: resampling units that respect the dependence between prompt-steps and between steps


def test_cluster_bootstrap_distribution_enumerated(ci):
    # cluster A: rows [1, 1]; cluster B: row [0]. Two clusters drawn with replacement:
    # AA (1/4) -> mean 1; AB or BA (1/2) -> rows [1, 1, 0], mean 2/3; BB (1/4) -> 0.
    # A row-level bootstrap could also give 1/3 (e.g. rows [1, 0, 0]); a cluster bootstrap cannot.
    out = ci.cluster_bootstrap([1, 1, 0], ["A", "A", "B"], resamples=20_000, seed=3, return_draws=True)
    draws = out["draws"]
    assert out["estimate"] == pytest.approx(2 / 3) and out["clusters"] == 2 and out["n"] == 3
    assert set(np.round(draws, 6)) == {0.0, round(2 / 3, 6), 1.0}
    for value, probability in ((1.0, 0.25), (2 / 3, 0.5), (0.0, 0.25)):
        assert np.mean(np.isclose(draws, value)) == pytest.approx(probability, abs=0.015)
    assert (out["low"], out["high"]) == (0.0, 1.0)


def test_cluster_bootstrap_se_matches_the_cluster_robust_formula(ci):
    # 300 clusters of 2-8 rows with a per-cluster success rate: the bootstrap SE of the overall mean
    # (a ratio estimator sum S_g / sum n_g) against its linearised cluster-robust SE,
    # sqrt(sum_g (S_g - n_g * ybar)^2) / N, written out here
    rng = np.random.default_rng(11)
    sizes = rng.integers(2, 9, size=300)
    rates = rng.beta(0.6, 0.9, size=300)
    values = np.concatenate([rng.random(n) < p for n, p in zip(sizes, rates)]).astype(float)
    labels = np.repeat(np.arange(300), sizes)
    ybar = values.mean()
    sums = np.array([values[labels == g].sum() for g in range(300)])
    robust_se = math.sqrt(((sums - sizes * ybar) ** 2).sum()) / values.size
    iid_se = math.sqrt(ybar * (1 - ybar) / values.size)
    out = ci.cluster_bootstrap(values, labels, resamples=3000, seed=5)
    assert out["se"] == pytest.approx(robust_se, rel=0.07)
    assert robust_se > 1.3 * iid_se  # the clusters matter here: a row bootstrap would be far too narrow


def test_block_bootstrap_ratio_by_hand(ci):
    # arm [1, 1, 3, 3], base all 1, blocks of 2: the 3 possible blocks have means 1, 2, 3; a resample
    # is 2 blocks drawn uniformly, so its mean is (m_i + m_j) / 2 with probability 1/9 per (i, j):
    # 1 (1/9), 1.5 (2/9), 2 (3/9), 2.5 (2/9), 3 (1/9)
    rng_free = ci.block_bootstrap_ratio([1, 1, 1, 1], [1, 1, 3, 3], block=2, resamples=1)
    assert rng_free["estimate"] == 2.0 and rng_free["block"] == 2
    # percentiles of that distribution: 2.5% -> 1, 97.5% -> 3
    seen = [ci.block_bootstrap_ratio([1, 1, 1, 1], [1, 1, 3, 3], block=2, resamples=3000, seed=seed) for seed in range(3)]
    assert all((s["low"], s["high"]) == (1.0, 3.0) for s in seen)
    # alternating 5, 15 against a constant 10 with blocks of 2: every block averages 10, so the
    # interval collapses onto the estimate; with single steps it does not
    fixed = ci.block_bootstrap_ratio([10, 10, 10, 10], [5, 15, 5, 15], block=2, resamples=500)
    assert (fixed["estimate"], fixed["low"], fixed["high"]) == (1.0, 1.0, 1.0)
    single = ci.block_bootstrap_ratio([10, 10, 10, 10], [5, 15, 5, 15], block=1, resamples=500)
    assert single["low"] < 1.0 < single["high"]
    with pytest.raises(ValueError, match="block=5"):
        ci.block_bootstrap_ratio([1, 2], [1, 2], block=5)


def test_block_bootstrap_distribution_enumerated(ci):
    # the resample distribution itself: arm [1, 1, 3, 3] over base 1, blocks of 2 (see above)
    res = ci.block_bootstrap_ratio([1, 1, 1, 1], [1, 1, 3, 3], block=2, resamples=18_000, seed=1, return_draws=True)
    for value, p in ((1.0, 1 / 9), (1.5, 2 / 9), (2.0, 3 / 9), (2.5, 2 / 9), (3.0, 1 / 9)):
        assert np.mean(res["draws"] == value) == pytest.approx(p, abs=0.015)
    assert set(res["draws"]) == {1.0, 1.5, 2.0, 2.5, 3.0}


def test_mcnemar_exact_by_hand(ci):
    # first right only on 3 problems, second right only on 1: p = 2 (C(4,0) + C(4,1)) / 2^4 = 0.625
    m = ci.mcnemar_exact([1, 1, 1, 0, 0, 1], [0, 0, 0, 1, 0, 1])
    assert (m["first_only"], m["second_only"], m["both"], m["neither"]) == (3, 1, 1, 1)
    assert m["p_value"] == pytest.approx(0.625)
    # 0 against 6 discordant: p = 2 / 2^6 = 0.03125; no discordant pair: p = 1
    assert ci.mcnemar_exact([0] * 6, [1] * 6)["p_value"] == pytest.approx(0.03125)
    assert ci.mcnemar_exact([1, 0], [1, 0])["p_value"] == 1.0


def test_t_quantiles_paired_t_and_mdd_by_hand(ci):
    # table values of Student's t
    for p, df, value in ((0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 5, 2.5706), (0.8, 3, 0.9785), (0.975, 30, 2.0423)):
        assert ci.t_quantile(p, df) == pytest.approx(value, abs=1e-4)
    # differences 1, 2, 3: mean 2, sd 1, half-width 4.302653 / sqrt(3) = 2.484138
    t = ci.paired_t_interval([1, 2, 3])
    assert (t["estimate"], t["sd"]) == (2.0, 1.0)
    assert (t["low"], t["high"]) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-5)
    # MDD at 4 pairs, sd 0.02: (3.182446 + 0.978472) x 0.02 / 2
    assert ci.minimum_detectable_difference(0.02, 4) == pytest.approx(0.0416092, abs=1e-6)
    assert math.isnan(ci.paired_t_interval([0.1])["low"])


def test_auc_and_paired_difference_by_hand(ci):
    # trapezoids (0.2 + 0.4) / 2 x 8 + 0.4 x 8 = 5.6, over 16 steps = 0.35
    assert ci.auc([0, 8, 16], [0.2, 0.4, 0.4]) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="increasing"):
        ci.auc([0, 0], [1, 1])
    d = ci.paired_bootstrap_difference([1, 0, 0, 1], [1, 1, 1, 1], resamples=500)
    # differences 0, 1, 1, 0: a resample's mean difference is k / 4 for k in 0..4
    assert d["estimate"] == pytest.approx(0.5) and d["low"] in (0.0, 0.25) and d["high"] in (0.75, 1.0)
