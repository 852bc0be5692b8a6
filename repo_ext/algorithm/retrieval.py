"""Which past responses of one prompt to replay: pure index selection over a prompt's FIFO buffer.

Every strategy sees the rewards of one prompt's buffer in FIFO order (index 0 = oldest entry) and
returns the chosen indices **sorted ascending** (i.e. in FIFO order, oldest first), as an int64
array. ``k`` larger than the buffer is clamped to the buffer size (the store's
``k = min(len(buffer), num_replays)``).

Reward order used by the reward-based strategies (``highest_k``, ``max_variance_k``): entries are
ranked by reward, and among equal rewards an *older* entry ranks *higher*. So ``highest_k`` keeps
older entries on ties (a stable sort by descending reward), and ``max_variance_k`` takes older
entries for its high end and newer ones for its low end when the boundary falls inside a tie.

Example::

    >>> import numpy as np
    >>> rewards = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    >>> select_replay_indices("recent_k", rewards, 2, rng=None)
    array([3, 4])
    >>> select_replay_indices("highest_k", rewards, 2, rng=None)
    array([1, 2])
    >>> select_replay_indices("max_variance_k", rewards, 2, rng=None)
    array([1, 3])
"""

from __future__ import annotations

from itertools import accumulate

import numpy as np

STRATEGIES = ("recent_k", "highest_k", "max_variance_k", "random_k", "all", "none")


def check_strategy(strategy: str) -> None:
    """Raise ValueError naming the valid strategies when ``strategy`` is not one of them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown replay strategy {strategy!r}; valid strategies are: {', '.join(STRATEGIES)}")


def select_replay_indices(
    strategy: str,
    rewards: np.ndarray,
    k: int,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Choose which entries of one prompt's buffer to replay.

    Args:
        strategy: one of :data:`STRATEGIES`.
            ``recent_k``: the k newest entries. ``highest_k``: the k highest rewards, ties keep older
            entries. ``max_variance_k``: the k-subset whose rewards have the largest population
            variance, ties to the larger reward sum (exact, see :func:`max_variance_subset`).
            ``random_k``: k entries uniformly without replacement, drawn from ``rng``.
            ``all``: the whole buffer (``k`` ignored). ``none``: nothing (``k`` ignored).
        rewards: (n,) float rewards of the buffer in FIFO order, index 0 = oldest.
        k: how many entries to replay, >= 0; clamped to n.
        rng: the generator ``random_k`` draws from (required for it, unused otherwise).

    Returns:
        (m,) int64 indices into ``rewards``, ascending, m = min(k, n) (n for ``all``, 0 for ``none``).
    """
    check_strategy(strategy)
    rewards = np.asarray(rewards)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be a 1-D array of one prompt's buffer, got shape {rewards.shape}")
    n = rewards.shape[0]
    if strategy == "none":
        return np.empty(0, dtype=np.int64)
    if strategy == "all":
        return np.arange(n, dtype=np.int64)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k (number of replays) must be an integer >= 0, got {k!r}")
    k = min(int(k), n)
    if strategy == "recent_k":
        return np.arange(n - k, n, dtype=np.int64)
    if strategy == "random_k":
        if rng is None:
            raise ValueError("strategy 'random_k' needs a numpy Generator (rng), got None")
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    if not np.all(np.isfinite(rewards)):
        raise ValueError(f"strategy {strategy!r} needs finite rewards, got {rewards.tolist()}")
    if strategy == "highest_k":
        order = _rank_order(rewards)
        return np.sort(order[n - k :])
    return max_variance_subset(rewards, k)


def _rank_order(rewards: np.ndarray) -> np.ndarray:
    """Indices sorted from the lowest-ranked to the highest-ranked entry.

    Rank = reward, and among equal rewards the older entry (smaller index) ranks higher.
    """
    n = rewards.shape[0]
    # lexsort sorts by the last key first: ascending reward, then descending index within ties
    return np.lexsort((-np.arange(n), rewards))


def max_variance_subset(rewards: np.ndarray, k: int) -> np.ndarray:
    """The k-subset with the largest population variance of rewards, ties to the larger reward sum.

    Exact in O(n log n). Why a prefix/suffix scan is exact: for a subset S with mean m, moving one
    of its values x to y = x + d, away from m (d > 0 if x >= m, d < 0 if x < m), changes
    k * Var by d * (2 (x - m) + d (1 - 1/k)) > 0 (k >= 2). So in a variance-maximising subset no
    unused value lies above a used value >= m or below a used value < m: as a multiset of
    values it consists of the i lowest and the k - i highest rewards for some i in 0..k. Variance
    and sum depend only on that multiset, so the best (variance, sum) over all C(n, k) subsets is
    reached by one of the k + 1 prefix/suffix splits of the sorted rewards.

    Comparisons are exact, with no float tolerance: every float is a dyadic rational, so the
    rewards are scaled to integers by a common power of two and k^2 * Var = k * sum(x^2) - sum(x)^2
    and the sum are compared as Python integers. Among splits equal in both, the one with fewer
    low-end entries wins; which of several equal rewards is taken follows the rank order of the
    module docstring (older entries rank higher).

    Args:
        rewards: (n,) finite float rewards, index 0 = oldest.
        k: subset size, 0 <= k <= n.

    Returns:
        (k,) int64 indices, ascending.
    """
    n = rewards.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] for a buffer of {n} entries, got {k}")
    order = _rank_order(rewards)
    ints = _as_common_integers(rewards[order].tolist())
    prefix_sum = [0, *accumulate(ints)]
    prefix_sq = [0, *accumulate(x * x for x in ints)]
    best_key, best_low = None, 0
    for low in range(k + 1):  # `low` lowest plus `k - low` highest
        high_start = n - (k - low)
        total = prefix_sum[low] + prefix_sum[n] - prefix_sum[high_start]
        total_sq = prefix_sq[low] + prefix_sq[n] - prefix_sq[high_start]
        key = (k * total_sq - total * total, total)
        if best_key is None or key > best_key:  # strict: equal keys keep the smaller `low`
            best_key, best_low = key, low
    chosen = np.concatenate([order[:best_low], order[n - (k - best_low) :]])
    return np.sort(chosen).astype(np.int64)


def _as_common_integers(values: list[float]) -> list[int]:
    """Scale floats to Python integers by one common power of two (exactly, no rounding)."""
    ratios = [float(v).as_integer_ratio() for v in values]  # denominators are powers of two
    common = max((den for _, den in ratios), default=1)
    return [num * (common // den) for num, den in ratios]
