"""Is replay doing anything? The diagnosis behind the RePO trainer's "replay stalled" warning.

A replay that silently does nothing looks like a healthy GRPO run; users of replay methods report
it as "replay silently disabled". The trainer asks :func:`replay_stall_reason` after every
injection; once the gate should have opened and nothing has been replayed, it warns with the
reason found here and logs ``repo/replay_stalled = 1``.

When the gate should open: a prompt gets ``rollout.n`` new entries per visit and (without
duplicates in the data) one visit per epoch, so it holds ``min_cache_to_replay`` entries after
``ceil(min_cache_to_replay / n)`` visits and is replayed at its next visit, in the epoch after:
the first step of that epoch is ``ceil(min_cache_to_replay / n) * steps_per_epoch + 1``. One more
step of grace covers the batches of that epoch whose prompts were dropped by ``drop_last`` earlier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def replay_gate_step(*, min_cache_to_replay: int, rollout_n: int, steps_per_epoch: int) -> int:
    """The first training step at which replayed rows are expected (see the module docstring)."""
    visits = math.ceil(min_cache_to_replay / max(rollout_n, 1))
    return visits * max(steps_per_epoch, 1) + 1


def replay_stall_reason(
    *,
    strategy: str,
    global_step: int,
    total_injected: int,
    min_cache_to_replay: int,
    rollout_n: int,
    steps_per_epoch: int,
    store_stats: Mapping[str, int],
    bad_rows: Mapping[str, int],
    dataset_prompts: int | None = None,
) -> str | None:
    """Why replay has not injected anything although it should have by ``global_step``; None when fine.

    Args:
        strategy: ``algorithm.repo.strategy`` (``none`` never stalls).
        global_step: the current training step (its injection already done).
        total_injected: replayed rows injected since this process started (or resumed).
        min_cache_to_replay, rollout_n, steps_per_epoch: give the gate step (:func:`replay_gate_step`).
        store_stats: :meth:`~repo_ext.algorithm.store.ReplayStore.stats` of the store now.
        bad_rows: on-policy rows not stored, by reason (``insert_on_policy_rows`` counters).
        dataset_prompts: rows of the training dataset, if known (distinct prompt keys cannot exceed it).
    """
    if strategy == "none" or total_injected > 0:
        return None
    gate = replay_gate_step(min_cache_to_replay=min_cache_to_replay, rollout_n=rollout_n, steps_per_epoch=steps_per_epoch)
    if global_step <= gate:
        return None
    prefix = (
        f"replay is on (algorithm.repo.strategy={strategy}) but no replayed row has been injected by step "
        f"{global_step}, although the gate should have opened at step {gate} (min_cache_to_replay="
        f"{min_cache_to_replay}, rollout.n={rollout_n}, {steps_per_epoch} steps per epoch): "
    )
    prompts, entries = store_stats["num_prompts"], store_stats["num_entries"]
    replayable, byte_evictions = store_stats["num_replayable_prompts"], store_stats["num_byte_evictions"]
    rejected = {reason: count for reason, count in bad_rows.items() if count and reason != "duplicate_prompt_groups"}
    rejected_text = ", ".join(f"{reason}={count}" for reason, count in sorted(rejected.items())) or "none"
    if entries == 0:
        return prefix + (
            f"the replay store is empty; on-policy rows not stored, by reason: {rejected_text}. Fix the data or "
            "the reward function so that responses can be stored (see docs/reliability.md)."
        )
    if dataset_prompts is not None and prompts > dataset_prompts:
        return prefix + (
            f"the store holds {prompts} distinct prompt keys for {dataset_prompts} prompts in the dataset, so the "
            "same prompt gets different token ids on different visits (e.g. a random or dated system prompt in "
            "the chat template). RePO keys its buffers by the prompt's token ids: make the prompt deterministic."
        )
    if byte_evictions > 0:
        inserted = max(int(store_stats["num_inserted"]), 1)
        steps_held = entries * global_step / inserted  # at the average insertion rate so far
        return prefix + (
            f"algorithm.repo.max_store_bytes={store_stats['max_store_bytes']} has evicted {byte_evictions} entries: "
            f"the store holds {entries} entries, about the last {steps_held:.0f} steps of responses, while a prompt "
            f"comes back once every {steps_per_epoch} steps, so its entries are gone before its next visit "
            f"({replayable} prompts pass the gate now). Raise max_store_bytes to hold min_cache_to_replay responses "
            "of every prompt of an epoch, or set it to null."
        )
    if replayable == 0:
        return prefix + (
            f"no prompt holds min_cache_to_replay={min_cache_to_replay} entries yet ({entries} entries over "
            f"{prompts} prompts); on-policy rows not stored, by reason: {rejected_text}. Lower "
            "min_cache_to_replay or check why rows are not stored."
        )
    return prefix + (
        f"{replayable} prompts pass the gate, but none of them was in a batch since; check the sampler "
        "(data.shuffle, a custom sampler) visits every prompt once per epoch."
    )
