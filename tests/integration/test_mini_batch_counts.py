"""Real-row counts per actor mini-batch (issue #13 finding 3), against counts made by hand."""

from __future__ import annotations

import pytest

from repo_ext.integration.mini_batch_counts import mini_batch_row_counts
from repo_ext.integration.zero_adv_skip import mini_batch_members


def test_two_ranks_two_mini_batches_with_padding_by_hand():
    # 12 rows in verl's order: rank 0 holds rows 0-5, rank 1 rows 6-11; mini-batches of 6 rows
    # (3 per rank): mini-batch 0 = rows 0, 1, 2, 6, 7, 8 and mini-batch 1 = rows 3, 4, 5, 9, 10, 11
    members = mini_batch_members(12, dp_size=2, rows_per_mini_batch=6, shuffle=False, seed=42)
    assert members == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11]]
    valid = [True] * 12
    valid[5] = valid[11] = valid[8] = False  # padding: two in mini-batch 1, one in mini-batch 0
    off = [False, True, False, True, True, False, False, True, False, False, False, False]
    counts = mini_batch_row_counts(valid, off, members, num_mini_batches=2)
    # mini-batch 0: valid rows 0, 1, 2, 6, 7 (off: 1, 7); mini-batch 1: valid rows 3, 4, 9, 10 (off: 3, 4)
    mb0, mb1 = {0, 1, 2, 6, 7, 8}, {3, 4, 5, 9, 10, 11}
    for i in range(12):
        assert counts["mini_batch"][i] == (0 if i in mb0 else 1)
        assert counts["rows"][i] == (5 if i in mb0 else 4)
        assert counts["off_rows"][i] == 2
        assert counts["on_rows"][i] == (3 if i in mb0 else 2)


def test_unknown_layout_gets_the_step_average():
    valid = [True, True, True, False]
    off = [False, True, True, False]
    counts = mini_batch_row_counts(valid, off, None, num_mini_batches=2)
    assert counts["mini_batch"] == [-1.0] * 4
    assert counts["rows"] == [1.5] * 4 and counts["on_rows"] == [0.5] * 4 and counts["off_rows"] == [1.0] * 4


def test_bad_input():
    with pytest.raises(ValueError, match="same length"):
        mini_batch_row_counts([True], [True, False], None, num_mini_batches=1)
    with pytest.raises(ValueError, match="partition"):
        mini_batch_row_counts([True, True], [False, False], [[0]], num_mini_batches=1)
