"""Retrieval strategies: exact selections on hand examples, max_variance_k against brute force."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repo_ext.algorithm.retrieval import STRATEGIES, max_variance_subset, select_replay_indices

# index:            0    1    2    3    4    5      (0 = oldest)
HAND_REWARDS = np.array([0.5, 1.0, 0.0, 1.0, 0.2, 0.0])


def test_recent_k_takes_the_newest():
    assert select_replay_indices("recent_k", HAND_REWARDS, 3, rng=None).tolist() == [3, 4, 5]


def test_highest_k_keeps_older_entries_on_ties():
    # 1.0 at 1 and 3, then 0.5 at 0
    assert select_replay_indices("highest_k", HAND_REWARDS, 3, rng=None).tolist() == [0, 1, 3]
    # two of the three 1.0s: the older two
    assert select_replay_indices("highest_k", np.array([1.0, 0.0, 1.0, 1.0]), 2, rng=None).tolist() == [0, 2]


def test_max_variance_k_hand_example_breaks_variance_ties_by_larger_sum():
    # by hand, k=3 over sorted values 0, 0, 0.2, 0.5, 1, 1:
    #   {0, 1, 1}: mean 2/3, population variance 2/9, sum 2
    #   {0, 0, 1}: mean 1/3, population variance 2/9, sum 1   -> loses the tie on the sum
    #   {0.5, 1, 1} (var 1/18), {0, 0, 0.2} (var 2/225): smaller
    # the zero taken is the newer one (index 5): the low end takes newer entries on ties
    assert select_replay_indices("max_variance_k", HAND_REWARDS, 3, rng=None).tolist() == [1, 3, 5]


def test_max_variance_k_binary_rewards_pick_a_balanced_subset():
    rewards = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    # only one zero: {0, 1, 1, 1} (variance 3/16) beats {1, 1, 1, 1} (variance 0); ones: the oldest three
    assert select_replay_indices("max_variance_k", rewards, 4, rng=None).tolist() == [0, 1, 2, 4]


def test_all_and_none_ignore_k():
    assert select_replay_indices("all", HAND_REWARDS, 2, rng=None).tolist() == [0, 1, 2, 3, 4, 5]
    assert select_replay_indices("none", HAND_REWARDS, 2, rng=None).tolist() == []


@pytest.mark.parametrize("strategy", ["recent_k", "highest_k", "max_variance_k"])
def test_k_is_clamped_to_the_buffer_and_zero_selects_nothing(strategy):
    assert select_replay_indices(strategy, HAND_REWARDS, 10, rng=None).tolist() == [0, 1, 2, 3, 4, 5]
    assert select_replay_indices(strategy, HAND_REWARDS, 0, rng=None).tolist() == []
    assert select_replay_indices(strategy, np.array([]), 3, rng=None).tolist() == []


def test_random_k_is_uniform_without_replacement_and_seeded():
    rng = np.random.default_rng(7)
    n, k, draws = 5, 2, 20000
    pair_counts: dict[tuple[int, ...], int] = {}
    for _ in range(draws):
        chosen = select_replay_indices("random_k", np.zeros(n), k, rng=rng)
        assert len(set(chosen.tolist())) == k and chosen.tolist() == sorted(chosen.tolist())
        pair_counts[tuple(chosen.tolist())] = pair_counts.get(tuple(chosen.tolist()), 0) + 1
    assert len(pair_counts) == 10  # C(5, 2) pairs, each with probability 1/10
    for count in pair_counts.values():
        assert abs(count / draws - 0.1) < 0.012  # > 5 standard deviations (0.0021)

    first = [select_replay_indices("random_k", np.zeros(8), 3, rng=np.random.default_rng(3)).tolist() for _ in range(2)]
    assert first[0] == first[1]


def test_random_k_without_a_generator_is_an_error():
    with pytest.raises(ValueError, match="random_k"):
        select_replay_indices("random_k", HAND_REWARDS, 2, rng=None)


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        select_replay_indices("random", HAND_REWARDS, 2, rng=None)
    message = str(info.value)
    assert "'random'" in message
    for name in STRATEGIES:
        assert name in message


@pytest.mark.parametrize("k", [-1, 1.5, True])
def test_bad_k_is_an_error(k):
    with pytest.raises(ValueError, match="k"):
        select_replay_indices("recent_k", HAND_REWARDS, k, rng=None)


def test_non_finite_rewards_are_rejected_by_reward_strategies():
    with pytest.raises(ValueError, match="finite"):
        select_replay_indices("max_variance_k", np.array([0.0, np.nan]), 1, rng=None)


# ---------------------------------------------------------------- brute force


def _exact_key(values) -> tuple[Fraction, Fraction]:
    """(k^2 * population variance, sum) in exact rational arithmetic."""
    xs = [Fraction(v) for v in values]
    k = len(xs)
    total = sum(xs, Fraction(0))
    return k * sum((x * x for x in xs), Fraction(0)) - total * total, total


def _brute_force_best(rewards: list[float], k: int) -> tuple[Fraction, Fraction]:
    return max(_exact_key([rewards[i] for i in combo]) for combo in itertools.combinations(range(len(rewards)), k))


reward_values = st.one_of(
    st.sampled_from([0.0, 1.0]),  # binary rewards: many ties, the sum tie-break matters
    st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0]),
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1.0, max_value=1.0, allow_nan=False).map(lambda x: round(x, 1)),
)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_max_variance_k_equals_brute_force(data):
    pool = data.draw(st.sampled_from(["binary", "mixed"]))
    n = data.draw(st.integers(min_value=1, max_value=10))
    element = st.sampled_from([0.0, 1.0]) if pool == "binary" else reward_values
    rewards = data.draw(st.lists(element, min_size=n, max_size=n))
    k = data.draw(st.integers(min_value=0, max_value=n))

    chosen = select_replay_indices("max_variance_k", np.array(rewards), k, rng=None).tolist()

    assert chosen == sorted(set(chosen)) and len(chosen) == k and all(0 <= i < n for i in chosen)
    assert _exact_key([rewards[i] for i in chosen]) == _brute_force_best(rewards, k)


@settings(max_examples=200, deadline=None)
@given(rewards=st.lists(st.sampled_from([0.0, 0.25, 1.0]), min_size=0, max_size=12), k=st.integers(0, 12))
def test_highest_k_equals_a_stable_sort(rewards, k):
    expected = sorted(sorted(range(len(rewards)), key=lambda i: (-rewards[i], i))[:k])
    assert select_replay_indices("highest_k", np.array(rewards), k, rng=None).tolist() == expected


def test_max_variance_k_is_exact_where_float_variance_would_tie():
    # 1e16 + 2 and 1e16 + 4 are exact floats; float64 variance arithmetic on these loses the
    # difference between the subsets, the exact comparison does not.
    rewards = [1e16, 1e16 + 2.0, 1e16 + 4.0, 1e16 + 4.0]
    chosen = max_variance_subset(np.array(rewards), 2).tolist()
    assert _exact_key([rewards[i] for i in chosen]) == _brute_force_best(rewards, 2)
    assert chosen == [0, 2]  # {1e16, 1e16 + 4}: the older of the two highest
