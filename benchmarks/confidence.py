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

Since issue 24 the harness uses resampling units that respect that dependence:
:func:`cluster_bootstrap` resamples whole prompts (all visits of a prompt together) for fractions
and ratios; :func:`block_bootstrap_ratio` resamples blocks of consecutive steps for step-time ratios;
paired held-out comparisons use :func:`mcnemar_exact` and :func:`paired_bootstrap_difference`; the
per-seed AUC differences of the time-to-accuracy study use :func:`paired_t_interval`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "Z_95", "auc", "block_bootstrap_ratio", "bootstrap_interval", "cluster_bootstrap", "mcnemar_exact",
    "minimum_detectable_difference", "paired_bootstrap_difference", "paired_t_interval", "ratio_of_means_paired",
    "ratio_of_means_two_samples", "t_quantile", "wilson_interval",
]

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


def cluster_bootstrap(
    values: Sequence | np.ndarray,
    clusters: Sequence,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
    return_draws: bool = False,
) -> dict:
    """Percentile bootstrap over clusters: each resample draws as many clusters as there are, with
    replacement, and evaluates ``statistic`` on all rows of the drawn clusters (a cluster drawn twice
    contributes its rows twice).

    Args:
        values: [n] or [n, k] rows (e.g. a prompt-step's paired on-policy / either flags).
        clusters: [n] cluster label of each row (e.g. the prompt identity).

    Returns:
        ``{"estimate", "low", "high", "se", "n", "clusters", "resamples", "level"}`` (+ ``draws``);
        ``se`` is the standard deviation of the finite resampled statistics.
    """
    data = np.asarray(values, dtype=float)
    labels = list(clusters)
    if data.shape[0] < 1 or len(labels) != data.shape[0]:
        raise ValueError(f"cluster_bootstrap: need one cluster label per row, got {len(labels)} labels for {data.shape[0]} rows")
    order: dict = {}
    for i, label in enumerate(labels):
        order.setdefault(label, []).append(i)
    members = [np.asarray(rows) for rows in order.values()]
    rng = np.random.default_rng(seed)
    g = len(members)
    draws = np.empty(resamples)
    for b in range(resamples):
        pick = rng.integers(0, g, size=g)
        draws[b] = statistic(data[np.concatenate([members[j] for j in pick])])
    low, high = _percentiles(draws, level)
    finite = draws[np.isfinite(draws)]
    out = {"estimate": float(statistic(data)), "low": low, "high": high, "se": float(finite.std()) if finite.size else math.nan,
           "n": int(data.shape[0]), "clusters": g, "resamples": resamples, "level": level}
    if return_draws:
        out["draws"] = draws
    return out


def block_bootstrap_ratio(
    base: Sequence, arm: Sequence, block: int, *, resamples: int = 10_000, level: float = 0.95, seed: int = 0,
    return_draws: bool = False,
) -> dict:
    """mean(arm) / mean(base) over paired steps (same step numbers, in step order), with a moving-block
    bootstrap: blocks of ``block`` consecutive pairs, start drawn uniformly from the n - block + 1
    possible, concatenated until n pairs (the last block cut). block=1 is the ordinary paired bootstrap."""
    a, b = np.asarray(arm, dtype=float), np.asarray(base, dtype=float)
    n = a.size
    if n < 1 or b.size != n or not 1 <= block <= n:
        raise ValueError(f"block_bootstrap_ratio: need equal-length paired series and 1 <= block={block} <= n={n}")
    rng = np.random.default_rng(seed)
    blocks_needed = -(-n // block)
    offsets = np.arange(block)
    draws = np.empty(resamples)
    for r in range(resamples):
        idx = (rng.integers(0, n - block + 1, size=blocks_needed)[:, None] + offsets).reshape(-1)[:n]
        draws[r] = _ratio(a[idx].mean(), b[idx].mean())
    low, high = _percentiles(draws, level)
    out = {"estimate": _ratio(a.mean(), b.mean()), "low": low, "high": high, "n": int(n), "block": block,
           "resamples": resamples, "level": level}
    if return_draws:
        out["draws"] = draws
    return out


def mcnemar_exact(first: Sequence, second: Sequence) -> dict:
    """Exact McNemar test of paired 0/1 outcomes (e.g. the same held-out problems under two models):
    b = first right and second wrong, c = the reverse; under H0 b ~ Binomial(b + c, 1/2); two-sided
    p = min(1, 2 P(X <= min(b, c)))."""
    x, y = np.asarray(first, dtype=int), np.asarray(second, dtype=int)
    if x.size != y.size or x.size < 1:
        raise ValueError(f"mcnemar_exact: need paired outcomes of equal length, got {x.size} and {y.size}")
    b, c = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    n = b + c
    p = 1.0 if n == 0 else min(1.0, 2.0 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)
    return {"first_only": b, "second_only": c, "both": int(((x == 1) & (y == 1)).sum()), "neither": int(((x == 0) & (y == 0)).sum()),
            "p_value": p, "n": int(x.size)}


def paired_bootstrap_difference(first: Sequence, second: Sequence, **kwargs) -> dict:
    """mean(second) - mean(first) over paired units, percentile bootstrap interval (pairs resampled together)."""
    pairs = np.column_stack([np.asarray(first, dtype=float), np.asarray(second, dtype=float)])
    return bootstrap_interval(pairs, lambda p: float(p[:, 1].mean() - p[:, 0].mean()), **kwargs)


def _t_cdf(x: float, df: int) -> float:
    """Student t CDF by Simpson integration of the density from 0 to |x| (4,000 intervals)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    grid = np.linspace(0.0, abs(x), 4001)
    dens = c * (1.0 + grid**2 / df) ** (-(df + 1) / 2)
    h = grid[1] - grid[0]
    area = h / 3 * (dens[0] + dens[-1] + 4 * dens[1:-1:2].sum() + 2 * dens[2:-1:2].sum())
    return 0.5 + math.copysign(area, x)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`_t_cdf`)."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile: need 0 < p={p} < 1 and df={df} >= 1")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def paired_t_interval(differences: Sequence, level: float = 0.95) -> dict:
    """mean +- t_{n-1, (1+level)/2} sd / sqrt(n) of per-pair differences (sd with n - 1)."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return {"estimate": float(d.mean()) if d.size else math.nan, "low": math.nan, "high": math.nan, "n": int(d.size), "sd": math.nan}
    sd = float(d.std(ddof=1))
    half = t_quantile((1 + level) / 2, d.size - 1) * sd / math.sqrt(d.size)
    return {"estimate": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half), "n": int(d.size), "sd": sd}


def minimum_detectable_difference(sd: float, pairs: int, level: float = 0.95, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test at ``level`` detects with ``power``:
    (t_{n-1, (1+level)/2} + t_{n-1, power}) sd / sqrt(n)."""
    if pairs < 2:
        return math.inf
    return (t_quantile((1 + level) / 2, pairs - 1) + t_quantile(power, pairs - 1)) * sd / math.sqrt(pairs)


def auc(steps: Sequence, values: Sequence) -> float:
    """Area under a curve by the trapezoid rule, divided by the step span: the curve's mean height
    (an accuracy curve gives a number in [0, 1])."""
    x, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if x.size < 2 or x.size != y.size or np.any(np.diff(x) <= 0):
        raise ValueError(f"auc: need >= 2 points with increasing steps, got {list(x)}")
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum() / (x[-1] - x[0]))
