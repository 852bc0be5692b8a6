"""pass@k and avg@n against hand-computed values and a brute-force enumeration of subsets."""

from __future__ import annotations

from itertools import combinations

import pytest

from repo_ext.evaluation.metrics import default_pass_ks, pass_at_k, summarize_correctness


def brute_force_pass_at_k(flags: list[bool], k: int) -> float:
    """Fraction of all k-subsets of the samples that contain at least one correct sample."""
    subsets = list(combinations(range(len(flags)), k))
    return sum(any(flags[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 2 / 5),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # fewer than 4 wrong samples: any 4 contain a correct one
        (4, 0, 2, 0.0),
        (4, 4, 1, 1.0),
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (10, 3, 5, 1 - 21 / 252),  # C(7,5)=21, C(10,5)=252
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        flags = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(flags, k), abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_stays_finite():
    # C(1024, 512) overflows a float; the estimator must still be exact: 1 - C(1023,512)/C(1024,512) = 512/1024
    assert pass_at_k(1024, 1, 512) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("args", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        pass_at_k(*args)


def test_default_pass_ks():
    assert default_pass_ks(1) == [1]
    assert default_pass_ks(8) == [1, 2, 4, 8]
    assert default_pass_ks(6) == [1, 2, 4, 6]
    assert default_pass_ks(32) == [1, 2, 4, 8, 16, 32]


def test_summarize_correctness_hand_example():
    correct = [
        [True, False, False, False],  # c=1
        [True, True, False, False],  # c=2
        [False, False, False, False],  # c=0
    ]
    summary = summarize_correctness(correct, [1, 2, 4])
    assert summary["problems"] == 3 and summary["samples_per_problem"] == 4
    assert summary["avg@n"] == pytest.approx((1 / 4 + 2 / 4 + 0) / 3)
    # pass@2: c=1 -> 1 - C(3,2)/C(4,2) = 1/2; c=2 -> 1 - C(2,2)/C(4,2) = 5/6; c=0 -> 0
    assert summary["pass@k"][2] == pytest.approx((1 / 2 + 5 / 6 + 0) / 3)
    assert summary["pass@k"][4] == pytest.approx(2 / 3)
    assert summary["pass@k"][1] == pytest.approx(summary["avg@n"])


def test_summarize_correctness_rejects_ragged_and_bad_k():
    with pytest.raises(ValueError, match="same number of samples"):
        summarize_correctness([[True], [True, False]], [1])
    with pytest.raises(ValueError, match="k="):
        summarize_correctness([[True, False]], [3])
    with pytest.raises(ValueError, match="no problems"):
        summarize_correctness([], [1])
