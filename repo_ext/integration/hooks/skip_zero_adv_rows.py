"""Hook ``_update_actor`` with ``algorithm.repo.skip_zero_advantage_rows`` on (driver): verl's actor
update on a smaller batch without the zero-advantage rows (the plan, the padding rows and why the
update stays the same: ``integration/zero_adv_skip.py``).

One job per function: plan the batch (:func:`plan_for_batch`), lay out the smaller batch
(:func:`smaller_batch_layout`), write it (:func:`put_smaller_batch`), run verl's update on it and
clear the padding rows (:func:`update_actor_skipping`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from repo_ext.integration.batch_layout import row_multiple
from repo_ext.integration.zero_adv_skip import (
    PADDING_SEQ_LEN,
    SkipPlan,
    carried_normalisers,
    layout_padding_rows,
    mini_batch_members,
    plan_zero_advantage_skip,
    row_skip_inputs,
)

#: verl's actor update with the optimizer mini-batch given as values:
#: ``update(batch, metrics, *, mini_batch_rows, shuffle) -> batch`` (``hooks.update_actor.verl_update_actor``)
ActorUpdate = Callable[..., Any]


def update_actor_skipping(
    trainer: Any,
    batch: Any,
    metrics: dict,
    *,
    dp_size: int,
    rows_per_mini_batch: int,
    micro_batch_size: int | None,
    update: ActorUpdate,
) -> Any:
    """Run verl's actor update (``update``) on ``batch`` without its zero-advantage rows.

    Args:
        trainer: the RePO trainer (config, tokenizer).
        batch: the step's KVBatchMeta as verl's ``_update_actor`` would receive it.
        metrics: the step's metrics; gains the :meth:`SkipPlan.metrics` and ``repo/skip_plan_s``.
        dp_size: the actor's data-parallel size.
        rows_per_mini_batch: rows of one optimizer mini-batch (all ranks) without skipping.
        micro_batch_size: the update's per-rank micro-batch size (None: dynamic batch size).
        update: verl's actor update with explicit mini-batch rows and shuffling (:data:`ActorUpdate`).

    Returns:
        ``batch`` (unchanged keys: the padding rows added here are deleted again).
    """
    start = time.perf_counter()
    actor = trainer.config.actor_rollout_ref.actor
    shuffle = bool(actor.get("shuffle", False))
    members = mini_batch_members(
        len(batch.keys), dp_size=dp_size, rows_per_mini_batch=rows_per_mini_batch, shuffle=shuffle,
        seed=int(actor.get("data_loader_seed", 42)),
    )
    plan, valid_tokens = plan_for_batch(batch, members, dp_size=dp_size, micro_batch_size=micro_batch_size)
    if len(plan.layout) >= len(batch.keys):  # nothing to gain: verl's own update, unchanged
        metrics.update(SkipPlan.unskipped_metrics(valid_tokens))
        metrics["repo/skip_plan_s"] = time.perf_counter() - start
        return update(batch, metrics, mini_batch_rows=rows_per_mini_batch, shuffle=bool(actor.shuffle))
    metrics.update(plan.metrics())
    smaller, pad_keys = put_smaller_batch(batch, plan, members, trainer.tokenizer.eos_token_id)
    metrics["repo/skip_plan_s"] = time.perf_counter() - start
    try:  # the smaller batch is laid out in mini-batch order: verl must not shuffle it
        update(smaller, metrics, mini_batch_rows=plan.rows_per_mini_batch, shuffle=False)
    finally:
        if pad_keys:
            tq.kv_clear(keys=pad_keys, partition_id=batch.partition_id)
    return batch


def plan_for_batch(
    batch: Any, members: list[list[int]], *, dp_size: int, micro_batch_size: int | None
) -> tuple[SkipPlan, list[int]]:
    """:func:`plan_zero_advantage_skip` of the rows of ``batch`` (read from TransferQueue), and the
    rows' valid tokens (:func:`row_skip_inputs`)."""
    data = tq.kv_batch_get(
        keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages", "response_mask", "loss_mask"]
    )
    nonzero, valid_tokens = row_skip_inputs(data["advantages"], data["response_mask"], data["loss_mask"])
    plan = plan_zero_advantage_skip(
        nonzero,
        valid_tokens,
        members,
        dp_size=dp_size,
        row_multiple=row_multiple(dp_size, [micro_batch_size]),
        seq_lens=[int(tag.get("seq_len", 0)) for tag in batch.tags],
    )
    return plan, valid_tokens


def smaller_batch_layout(
    batch: Any, plan: SkipPlan, members: list[list[int]], pad_uid: str
) -> tuple[list[str], list[dict], list[str], list[dict]]:
    """Keys and tags of the smaller batch in ``plan.layout`` order, then the padding rows' keys and tags.

    A padding row of mini-batch ``k`` is keyed ``<pad_uid>_<index>_0`` (verl's ``<uid>_<index>_<turn>``)
    and tagged as verl tags its own padding rows, from the tag of mini-batch ``k``'s first row.
    """
    keys, tags, pad_keys, pad_tags = [], [], [], []
    for entry in plan.layout:
        if entry >= 0:
            keys.append(batch.keys[entry])
            tags.append(batch.tags[entry])
            continue
        key = f"{pad_uid}_{len(pad_keys)}_0"
        tag = dict(batch.tags[members[-1 - entry][0]])
        tag.update(is_padding=True, prompt_len=1, response_len=1, seq_len=PADDING_SEQ_LEN)
        pad_keys.append(key)
        pad_tags.append(tag)
        keys.append(key)
        tags.append(tag)
    return keys, tags, pad_keys, pad_tags


def put_smaller_batch(batch: Any, plan: SkipPlan, members: list[list[int]], eos_token_id: int) -> tuple[Any, list[str]]:
    """Write the smaller batch to TransferQueue; its KVBatchMeta and the padding rows' keys (to be
    cleared after the update). The kept rows gain :func:`carried_normalisers`, the padding rows
    (:func:`layout_padding_rows`) are added."""
    pid = batch.partition_id
    pad_rows = []
    if plan.padding_rows:  # one real row of each mini-batch, every field, as the padding rows' template
        templates = tq.kv_batch_get(keys=[batch.keys[rows[0]] for rows in members], partition_id=pid)
        template_rows = [{name: templates[k][name] for name in templates.keys()} for k in range(len(members))]
        pad_rows = layout_padding_rows(plan, template_rows, eos_token_id)
    pad_uid = f"pad{uuid.uuid4().hex}"
    keys, tags, pad_keys, pad_tags = smaller_batch_layout(batch, plan, members, pad_uid)
    for row in pad_rows:
        row["uid"] = pad_uid
    kept = [entry for entry in plan.layout if entry >= 0]
    if kept:
        carried = [carried_normalisers(plan, plan.mini_batch_of[i]) for i in kept]
        tq.kv_batch_put(keys=[batch.keys[i] for i in kept], partition_id=pid, fields=list_of_dict_to_tensordict(carried))
    if pad_keys:
        tq.kv_batch_put(keys=pad_keys, partition_id=pid, fields=list_of_dict_to_tensordict(pad_rows), tags=pad_tags)
    smaller = KVBatchMeta(keys=keys, tags=tags, partition_id=pid, fields=None, extra_info=dict(batch.extra_info or {}))
    return smaller, pad_keys
