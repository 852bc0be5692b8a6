"""Accuracy metrics over n sampled answers per problem.

For one problem with ``n`` samples of which ``c`` are correct:

- avg@n (what the paper reports as pass@1, and as avg@32 for AIME/AMC): ``c / n``, the mean
  accuracy of a single sample.
- pass@k, for ``k <= n``: the unbiased estimator of the probability that at least one of k
  samples drawn without replacement from the n is correct (Chen et al. 2021, "Evaluating Large
  Language Models Trained on Code"): ``1 - C(n - c, k) / C(n, k)``. For ``k = 1`` it equals
  ``c / n``.

A benchmark's score is the mean of the per-problem values.
"""

from __future__ import annotations

from math import comb
from typing import Sequence

__all__ = ["pass_at_k", "default_pass_ks", "summarize_correctness"]


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of one problem: ``1 - C(n - c, k) / C(n, k)``.

    Args:
        num_samples: n, samples drawn for the problem (>= 1).
        num_correct: c, how many of them are correct (0 <= c <= n).
        k: the number of attempts allowed (1 <= k <= n).
    """
    if num_samples < 1:
        raise ValueError(f"pass_at_k: num_samples must be >= 1, got {num_samples}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"pass_at_k: num_correct must be in [0, num_samples={num_samples}], got {num_correct}")
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass_at_k: k must be in [1, num_samples={num_samples}], got {k}")
    if num_samples - num_correct < k:
        return 1.0
    # exact integer binomials; int / int gives the correctly rounded float even for huge values
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


def default_pass_ks(num_samples: int) -> list[int]:
    """Powers of two up to n, plus n itself: ``[1, 2, 4, ..., n]``."""
    if num_samples < 1:
        raise ValueError(f"default_pass_ks: num_samples must be >= 1, got {num_samples}")
    ks, k = [], 1
    while k < num_samples:
        ks.append(k)
        k *= 2
    ks.append(num_samples)
    return ks


def summarize_correctness(correct: Sequence[Sequence[bool]], ks: Sequence[int]) -> dict:
    """Benchmark-level metrics from per-problem, per-sample correctness.

    Args:
        correct: one sequence per problem, each of the same length n (samples per problem).
        ks: the k values for pass@k, each in [1, n].

    Returns:
        ``{"problems": P, "samples_per_problem": n, "avg@n": mean of c/n,
        "pass@k": {k: mean pass@k}}``; ``avg@n`` equals ``pass@k[1]``.
    """
    if not correct:
        raise ValueError("summarize_correctness: no problems were scored")
    n = len(correct[0])
    if any(len(flags) != n for flags in correct):
        lengths = sorted({len(flags) for flags in correct})
        raise ValueError(f"summarize_correctness: every problem needs the same number of samples, got {lengths}")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"summarize_correctness: pass@k needs 1 <= k <= n={n} samples per problem, got k={bad}")
    counts = [sum(bool(flag) for flag in flags) for flags in correct]
    problems = len(counts)
    return {
        "problems": problems,
        "samples_per_problem": n,
        "avg@n": sum(c / n for c in counts) / problems,
        "pass@k": {int(k): sum(pass_at_k(n, c, k) for c in counts) / problems for k in ks},
    }
