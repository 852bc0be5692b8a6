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
