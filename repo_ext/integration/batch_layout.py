"""How many rows a RePO training batch is padded to, so that verl can split it after injection.

Replayed rows are added to the batch before verl's balancing, so the row count varies from step to
step (0 to num_replays per prompt). The RePO trainer keeps the number of optimizer steps per
training step what the user configured and lets the replayed rows enlarge each mini-batch instead.
verl then requires, without dynamic batch sizes (verl/workers/engine/utils.py
``prepare_micro_batches`` asserts it), that every rank's share of every forward pass be a whole
number of micro-batches:

- the actor update: each mini-batch's per-rank rows divisible by ``ppo_micro_batch_size_per_gpu``;
- the old-log-prob forward over the batch: per-rank rows divisible by
  ``rollout.log_prob_micro_batch_size_per_gpu``; the reference forward likewise with
  ``ref.log_prob_micro_batch_size_per_gpu``.

verl pads the batch with no-op rows (zero response mask) up to the multiple the trainer asks for;
these functions compute that multiple.
"""

from __future__ import annotations

import math


def row_multiple(dp_size: int, micro_batch_sizes: list[int | None]) -> int:
    """Rows every mini-batch must be a multiple of: ``dp_size * lcm(micro-batch sizes per rank)``.

    Args:
        dp_size: data-parallel ranks of the actor, >= 1.
        micro_batch_sizes: the per-rank micro-batch sizes of every forward pass over the batch;
            None entries (dynamic batch size, or a pass that does not run) impose nothing.
    """
    if dp_size < 1:
        raise ValueError(f"dp_size must be >= 1, got {dp_size}")
    sizes = [int(size) for size in micro_batch_sizes if size is not None]
    if any(size < 1 for size in sizes):
        raise ValueError(f"micro-batch sizes must be >= 1, got {sizes}")
    return dp_size * math.lcm(*sizes) if sizes else dp_size


def replay_batch_layout(n_on: int, n_off: int, *, rows_per_mini_batch: int, multiple: int) -> tuple[int, int]:
    """``(num_mini_batches, rows_per_padded_mini_batch)`` for a batch of n_on + n_off rows.

    ``num_mini_batches = max(1, n_on // rows_per_mini_batch)``: the optimizer steps verl would take
    on the on-policy rows alone (``rows_per_mini_batch = ppo_mini_batch_size * rollout.n``).
    Each mini-batch gets the smallest multiple of ``multiple`` rows such that all rows fit:
    ``num_mini_batches * rows >= n_on + n_off``; verl fills the rest with padding rows.

    Example: 8 on-policy and 6 replayed rows, one mini-batch of 8, micro-batch 8 on 1 rank:
    ``replay_batch_layout(8, 6, rows_per_mini_batch=8, multiple=8) == (1, 16)`` (2 padding rows).
    """
    if n_on < 1 or n_off < 0:
        raise ValueError(f"need n_on >= 1 and n_off >= 0 rows, got n_on={n_on}, n_off={n_off}")
    if rows_per_mini_batch < 1 or multiple < 1:
        raise ValueError(
            f"rows_per_mini_batch and multiple must be >= 1, got {rows_per_mini_batch} and {multiple}"
        )
    num_mini_batches = max(1, n_on // rows_per_mini_batch)
    rows = math.ceil((n_on + n_off) / (num_mini_batches * multiple)) * multiple
    return num_mini_batches, rows
