"""Row counts of every actor mini-batch, written on its rows before verl's actor update.

verl divides seq-mean-* losses by ``global_batch_size``, which its trainer sets to the configured
mini-batch rows (verl/trainer/ppo/v1/trainer_base.py ``_update_actor``: ``ppo_mini_batch_size *
rollout.n``; under RePO the padded mini-batch rows, see ``batch_layout``). Padding rows (zero
response mask, verl/trainer/ppo/padding_utils.py) then count as rows, and the gradient is scaled by
real / padded rows, a factor that changes with the replay count. The right divisor is the number of
rows with at least one valid token in the mini-batch over all data-parallel ranks; the ``paper``
weighting needs the same count per side. "Valid" is by ``loss_mask``, the mask verl's engine counts
(``batch_num_tokens``) and that marks padding rows: rollout correction's rejection sampling zeroes
rejected tokens in ``response_mask`` only, and a row it rejects entirely still counts, as it does in
verl's own ``global_batch_size``.

Which rows form a mini-batch is verl's choice; ``zero_adv_skip.mini_batch_members`` reproduces it
with verl's own iterator. The counts are exact whenever the mini-batches are the same in every
epoch (no shuffle, one epoch, or one mini-batch); with shuffled mini-batches over several epochs
every row gets the step's average per mini-batch. Every row also carries its mini-batch index
(-1 when unknown) so that the loss can check, per micro-batch, that this layout is the one verl used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from repo_ext.integration.replay_rows import NORM_OFF_FIELD, NORM_ON_FIELD

#: index of the row's mini-batch in the step (-1: not known, shuffled)
MINI_BATCH_FIELD = "repo_mini_batch"
#: rows with a valid token in the row's mini-batch, all ranks: the seq-mean-* divisor
NORM_ROWS_FIELD = "repo_norm_rows"


def mini_batch_row_counts(
    valid: Sequence[bool],
    off_policy: Sequence[bool],
    members: list[list[int]] | None,
    *,
    num_mini_batches: int,
) -> dict[str, list[float]]:
    """Per row: its mini-batch index and that mini-batch's valid, on-policy and off-policy rows.

    Args:
        valid: per row of the batch as sent to verl's actor update, True when the row has at least
            one ``loss_mask`` token (False for padding rows).
        off_policy: per row, True for replayed rows.
        members: row indices of each mini-batch, all ranks
            (``zero_adv_skip.mini_batch_members``: verl's own assignment), or None when it is not
            known (shuffled mini-batches over several epochs): then every row gets the step's
            average per mini-batch and mini-batch index -1.
        num_mini_batches: mini-batches per epoch.

    Returns:
        ``{"mini_batch": [...], "rows": [...], "on_rows": [...], "off_rows": [...]}``, one entry per
        row; the counts cover valid rows only.

    Example: 8 rows, mini-batch 0 = rows 0, 1, 4, 5 and mini-batch 1 = rows 2, 3, 6, 7 (2 ranks,
    no shuffle); rows 5, 6 and 7 are padding and row 1 is replayed:
    ``mini_batch_row_counts([1, 1, 1, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0], [[0, 1, 4, 5], [2, 3, 6, 7]],
    num_mini_batches=2)["rows"] == [3, 3, 2, 2, 3, 3, 2, 2]``.
    """
    n = len(valid)
    if len(off_policy) != n:
        raise ValueError(f"valid ({n} rows) and off_policy ({len(off_policy)} rows) must have the same length")
    if num_mini_batches < 1:
        raise ValueError(f"num_mini_batches must be >= 1, got {num_mini_batches}")
    if members is None:
        mini_batch = [-1] * n
        slots = [list(range(n))]
    else:
        if sorted(i for rows in members for i in rows) != list(range(n)):
            raise ValueError(f"members must partition the {n} rows, got {members}")
        mini_batch = [0] * n
        for j, rows in enumerate(members):
            for i in rows:
                mini_batch[i] = j
        slots = members
    scale = num_mini_batches if members is None else 1
    totals = {
        "rows": [sum(1 for i in rows if valid[i]) / scale for rows in slots],
        "on_rows": [sum(1 for i in rows if valid[i] and not off_policy[i]) / scale for rows in slots],
        "off_rows": [sum(1 for i in rows if valid[i] and off_policy[i]) / scale for rows in slots],
    }
    out: dict[str, list[float]] = {"mini_batch": [float(j) for j in mini_batch]}
    for name, per_slot in totals.items():
        out[name] = [float(per_slot[max(j, 0)]) for j in mini_batch]
    return out


def write_mini_batch_counts(
    batch, *, dp_size: int, mini_batch_rows: int, shuffle: bool, seed: int, epochs: int, off_keys: set[str]
) -> None:
    """Compute :func:`mini_batch_row_counts` for a ``KVBatchMeta`` about to go to verl's actor update
    and put them on its rows in TransferQueue (``repo_mini_batch``, ``repo_norm_rows``, and the
    per-mini-batch ``repo_norm_on`` / ``repo_norm_off`` of the ``paper`` weighting), every row,
    padding included (TransferQueue returns only the fields every row has). ``batch.fields``, when
    it names fields, gains these (the actor worker reads only the named fields).

    ``mini_batch_rows``: rows of one mini-batch over all ranks; ``shuffle``, ``seed``, ``epochs``:
    verl's ``actor.shuffle``, ``actor.data_loader_seed``, ``actor.ppo_epochs``.
    """
    import transfer_queue as tq
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    from repo_ext.integration.zero_adv_skip import mini_batch_members

    keys = list(batch.keys)
    num_mini_batches = max(len(keys) // mini_batch_rows, 1)
    members = None
    if not (shuffle and epochs > 1 and num_mini_batches > 1):  # otherwise every epoch mixes anew
        members = mini_batch_members(
            len(keys), dp_size=dp_size, rows_per_mini_batch=mini_batch_rows, shuffle=shuffle, seed=seed
        )
    data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=["loss_mask"])
    valid = [bool(mask.sum() > 0) for mask in data["loss_mask"].unbind()]
    counts = mini_batch_row_counts(valid, [key in off_keys for key in keys], members, num_mini_batches=num_mini_batches)
    rows = [
        {
            MINI_BATCH_FIELD: torch.tensor(counts["mini_batch"][i], dtype=torch.float32),
            NORM_ROWS_FIELD: torch.tensor(counts["rows"][i], dtype=torch.float32),
            NORM_ON_FIELD: torch.tensor(counts["on_rows"][i], dtype=torch.float32),
            NORM_OFF_FIELD: torch.tensor(counts["off_rows"][i], dtype=torch.float32),
        }
        for i in range(len(keys))
    ]
    tq.kv_batch_put(keys=keys, partition_id=batch.partition_id, fields=list_of_dict_to_tensordict(rows))
    if batch.fields is not None:  # the worker reads only the fields the meta names (verl's transferqueue_utils)
        named = [batch.fields] if isinstance(batch.fields, str) else list(batch.fields)
        batch.fields = list(dict.fromkeys([*named, *rows[0].keys()]))
