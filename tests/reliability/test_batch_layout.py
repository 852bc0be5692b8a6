"""After injection every batch splits evenly over data-parallel ranks and micro-batches.

Checked against a brute-force search over row counts, and against the case that crashed a real
run before the micro-batch size was part of the multiple (duplicate prompts: 8 on-policy + 6
replayed rows, micro-batch 8: verl's ``prepare_micro_batches`` asserted "data size must be
divisible by ... micro_batch_size_per_gpu" at the first step with replay).
"""

from __future__ import annotations

import itertools
import math

import pytest

from repo_ext.integration.batch_layout import replay_batch_layout, row_multiple


def _brute_force(n_on, n_off, rows_per_mb, dp, micros):
    num_mb = max(1, n_on // rows_per_mb)
    m = 1
    while True:  # the smallest mini-batch that holds every row and splits into whole micro-batches on every rank
        fits = num_mb * m >= n_on + n_off
        splits = m % dp == 0 and all((m // dp) % micro == 0 for micro in micros)
        if fits and splits:
            return num_mb, m
        m += 1


def test_the_duplicate_prompt_case_that_crashed():
    assert replay_batch_layout(8, 6, rows_per_mini_batch=8, multiple=row_multiple(1, [8, 8, None])) == (1, 16)


def test_matches_brute_force():
    for n_on, n_off, rows_per_mb, dp, micros in itertools.product(
        (8, 16, 24, 32), (0, 1, 5, 6, 8, 13, 32), (4, 8, 16), (1, 2, 4), ((), (1,), (2, 4), (4, 3), (8,))
    ):
        multiple = row_multiple(dp, list(micros) + [None])
        got = replay_batch_layout(n_on, n_off, rows_per_mini_batch=rows_per_mb, multiple=multiple)
        assert got == _brute_force(n_on, n_off, rows_per_mb, dp, micros), (n_on, n_off, rows_per_mb, dp, micros)
        num_mb, m = got
        total = num_mb * m
        assert total % dp == 0 and total - (n_on + n_off) < num_mb * multiple  # padding below one multiple per mini-batch


def test_no_replay_keeps_verls_mini_batches():
    # 32 prompts x 8 samples, mini-batch 8 prompts: 4 optimizer steps of 64 rows, as verl without replay
    assert replay_batch_layout(256, 0, rows_per_mini_batch=64, multiple=row_multiple(8, [4, 8])) == (4, 64)
    # the paper's setting: 4 prompts x 8, one mini-batch, G_off = 8 replayed rows per prompt
    assert replay_batch_layout(32, 32, rows_per_mini_batch=32, multiple=row_multiple(1, [8])) == (1, 64)


def test_row_multiple():
    assert row_multiple(4, [2, 3, None]) == 4 * math.lcm(2, 3)
    assert row_multiple(2, [None, None]) == 2  # dynamic batch size: only the ranks matter
    with pytest.raises(ValueError, match="dp_size"):
        row_multiple(0, [])
    with pytest.raises(ValueError, match="micro-batch"):
        row_multiple(1, [0])


def test_invalid_counts_are_errors():
    with pytest.raises(ValueError, match="n_on"):
        replay_batch_layout(0, 4, rows_per_mini_batch=8, multiple=1)
    with pytest.raises(ValueError, match="rows_per_mini_batch"):
        replay_batch_layout(8, 4, rows_per_mini_batch=0, multiple=1)
