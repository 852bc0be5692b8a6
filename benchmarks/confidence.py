"""95% intervals for the RePO vs GRPO benchmark: percentile bootstrap and Wilson binomial intervals.

Pure numpy, no verl. Used by ``benchmarks/bench_repo_vs_grpo.py``; tested by hand-computed values in
``tests/benchmarks/test_confidence.py``.

Bootstrap, as used here: the units are prompt-steps (one prompt in one training step). A statistic
is recomputed on ``resamples`` resamples drawn with replacement, each of the same size as the data;
paired quantities (the on-policy and the on-policy-or-replayed flag of the same prompt-step) are
resampled together, two independent runs each within itself. The interval is the 2.5th and 97.5th
percentile of the resampled statistic (numpy's linear interpolation). It treats prompt-steps as
independent draws, which they are not quite (the same prompt comes back every epoch, and the prompts
of one step share the policy of that step), so the intervals are somewhat too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["Z_95", "bootstrap_interval", "ratio_of_means_paired", "ratio_of_means_two_samples", "wilson_interval"]

#: the standard normal's 97.5th percentile
Z_95 = 1.959963984540054


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - level) / 2.0
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (math.nan, math.nan)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(
    data: Sequence | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap interval of ``statistic`` over the rows of ``data``.

    Args:
        data: [n] or [n, k] values; a row (e.g. a prompt-step's paired flags) is resampled as a whole.
        statistic: maps an [n] / [n, k] array to a number (resamples where it is not finite are dropped).

    Returns:
        ``{"estimate", "low", "high", "n", "resamples", "level"}``; estimate is ``statistic(data)``.
    """
    values = np.asarray(data, dtype=float)
    if values.shape[0] < 1:
        raise ValueError("bootstrap_interval: no data")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap_interval: resamples={resamples} must be >= 1 and level={level} in (0, 1)")
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    draws = np.array([statistic(values[rng.integers(0, n, size=n)]) for _ in range(resamples)], dtype=float)
    low, high = _percentiles(draws, level)
    return {"estimate": float(statistic(values)), "low": low, "high": high, "n": int(n), "resamples": resamples, "level": level}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else math.nan


def ratio_of_means_paired(first: Sequence, second: Sequence, **kwargs) -> dict:
    """mean(second) / mean(first) over paired units, with its bootstrap interval (pairs resampled together)."""
    pairs = np.column_stack([np.asarray(first, dtype=float), np.asarray(second, dtype=float)])
    return bootstrap_interval(pairs, lambda p: _ratio(p[:, 1].mean(), p[:, 0].mean()), **kwargs)


def ratio_of_means_two_samples(
    numerator: Sequence, denominator: Sequence, *, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> dict:
    """mean(numerator) / mean(denominator) for two independent samples (two runs), each resampled on its own."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.size < 1 or b.size < 1:
        raise ValueError("ratio_of_means_two_samples: both samples need data")
    rng = np.random.default_rng(seed)
    draws = np.array(
        [_ratio(a[rng.integers(0, a.size, a.size)].mean(), b[rng.integers(0, b.size, b.size)].mean()) for _ in range(resamples)]
    )
    low, high = _percentiles(draws, level)
    return {
        "estimate": _ratio(a.mean(), b.mean()), "low": low, "high": high, "n": [int(a.size), int(b.size)],
        "resamples": resamples, "level": level,
    }


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> dict:
    """Wilson score interval of a binomial proportion (95% with the default z).

    centre = (p + z^2 / 2n) / (1 + z^2 / n), half-width = z sqrt(p(1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n).
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"wilson_interval: need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return {"estimate": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "successes": successes, "trials": trials}
