"""Hook ``_balance_batch`` (before verl's dp balancing; driver): add the replayed rows to the batch.

For each prompt of the batch, past responses are retrieved from the
:class:`~repo_ext.algorithm.store.ReplayStore` (key: hash of the prompt tokens) and added as extra
rows carrying their stored rewards and stored behaviour log-probs (``replay_rows.build_replay_row``).
On-policy rows get ``repo_off_policy=0``, replayed rows 1. Then the replay-health check of the step.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from repo_ext.integration.hooks.step_state import column_strings
from repo_ext.integration.replay_health import replay_stall_reason
from repo_ext.integration.replay_rows import (
    OFF_POLICY_FIELD,
    REPLAY_SESSION_BASE,
    build_replay_row,
    prompt_key,
    replay_row_key,
)

logger = logging.getLogger(__name__)


def inject_replays(trainer: Any, batch: KVBatchMeta) -> KVBatchMeta:
    """The batch with this step's replayed rows appended (on-policy rows first, unchanged).

    Fills the step state (``trainer._step_state``): on/off keys, prompt keys, stored behaviour
    log-probs, and the ``repo/replayed_rows``, ``repo/staleness_*``, ... metrics.
    """
    state, repo = trainer._step_state, trainer.repo_config
    pid = batch.partition_id
    state.on_keys = list(batch.keys)
    data = tq.kv_batch_get(keys=state.on_keys, partition_id=pid, select_fields=["prompts", "uid"])
    uids = column_strings(data["uid"])
    prompts = data["prompts"]
    rows_of_prompt: dict[str, list[str]] = defaultdict(list)
    uid_of_prompt: dict[str, set[str]] = defaultdict(set)
    for i, key in enumerate(state.on_keys):
        pkey = prompt_key(prompts[i])
        state.prompt_key_of[key] = pkey
        rows_of_prompt[pkey].append(key)
        uid_of_prompt[pkey].add(uids[i])

    # Duplicate prompts in one batch (the same prompt sampled twice) are different verl groups
    # (different uids) but one store key: they are given replay once, with the first group.
    retrieved = []
    for pkey, keys in rows_of_prompt.items():
        if len(uid_of_prompt[pkey]) > 1:
            trainer._bad_rows["duplicate_prompt_groups"] += len(uid_of_prompt[pkey]) - 1
        entries = trainer.replay_store.retrieve(pkey, repo.strategy, repo.num_replays)
        if entries:
            retrieved.append((pkey, keys[0], entries))
    new_keys, new_rows, new_tags, staleness = _replay_rows(trainer, batch, retrieved)

    n_on, n_off = len(state.on_keys), len(new_keys)
    state.off_keys = new_keys
    on_fields = list_of_dict_to_tensordict([{OFF_POLICY_FIELD: torch.tensor(0, dtype=torch.int64)} for _ in state.on_keys])
    tq.kv_batch_put(keys=state.on_keys, partition_id=pid, fields=on_fields)
    if new_rows:
        tq.kv_batch_put(keys=new_keys, partition_id=pid, fields=list_of_dict_to_tensordict(new_rows), tags=new_tags)
    trainer._total_injected += n_off

    num_prompts = max(len(rows_of_prompt), 1)
    state.metrics.update(
        {
            "repo/replayed_rows": float(n_off),
            "repo/on_policy_rows": float(n_on),
            "repo/prompts_with_replay": float(len(retrieved)),
            "repo/prompts_with_replay_frac": len(retrieved) / num_prompts,
            "repo/staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
            "repo/staleness_max": float(np.max(staleness)) if staleness else 0.0,
        }
    )
    trainer._check_replay_alive()
    return KVBatchMeta(
        keys=list(batch.keys) + new_keys,
        tags=list(batch.tags) + new_tags,
        partition_id=pid,
        fields=None,
        extra_info=batch.extra_info,
    )


def _replay_rows(trainer: Any, batch: KVBatchMeta, retrieved: list) -> tuple[list, list, list, list]:
    """The replayed rows of ``retrieved`` ((prompt key, template TQ key, store entries) per prompt):
    their TQ keys, rows (every field), tags and staleness in steps."""
    state, pid = trainer._step_state, batch.partition_id
    new_keys, new_rows, new_tags, staleness = [], [], [], []
    if not retrieved:
        return new_keys, new_rows, new_tags, staleness
    key_index = {k: i for i, k in enumerate(batch.keys)}
    # one read of every field of one on-policy row per replayed prompt (the row templates)
    templates = tq.kv_batch_get(keys=[template_key for _, template_key, _ in retrieved], partition_id=pid)
    for position, (pkey, template_key, entries) in enumerate(retrieved):
        template = templates[position]
        template = {name: template[name] for name in template.keys()}
        template_tag = batch.tags[key_index[template_key]]
        uid = str(template["uid"])
        for j, entry in enumerate(entries):
            row = build_replay_row(template, entry, session_id=REPLAY_SESSION_BASE + j)
            key = replay_row_key(uid, j)  # verl's {uid}_{session}_{index}: its rollout dump parses it
            new_keys.append(key)
            state.prompt_key_of[key] = pkey
            new_rows.append(row)
            tag = dict(template_tag)
            tag.update(
                response_len=int(row["responses"].shape[0]),
                seq_len=int(row["input_ids"].shape[0]),
                repo_off_policy=True,
            )
            new_tags.append(tag)
            state.off_behaviour[key] = row["rollout_log_probs"]
            staleness.append(trainer.global_steps - entry.step)
    return new_keys, new_rows, new_tags, staleness


def check_replay_alive(trainer: Any) -> None:
    """Warn loudly (once) and log ``repo/replay_stalled`` while replay is configured on but nothing
    has been injected after the gate should have opened; the reason comes from ``replay_health``."""
    repo = trainer.repo_config
    steps_per_epoch = max(int(getattr(trainer, "steps_per_epoch", 1) or 1), 1)
    train_dataset = getattr(trainer, "train_dataset", None)
    reason = replay_stall_reason(
        strategy=repo.strategy,
        global_step=trainer.global_steps,
        total_injected=trainer._total_injected,
        min_cache_to_replay=repo.min_cache_to_replay,
        rollout_n=int(trainer.config.actor_rollout_ref.rollout.n),
        steps_per_epoch=steps_per_epoch,
        store_stats=trainer.replay_store.stats(),
        bad_rows=trainer._bad_rows,
        dataset_prompts=None if train_dataset is None else len(train_dataset),
        store_start_step=trainer._store_start_step,
    )
    trainer._step_state.metrics["repo/replay_stalled"] = float(reason is not None)
    trainer._step_state.metrics["repo/store_start_step"] = float(trainer._store_start_step)
    if reason is not None and not trainer._gate_warning_done:
        trainer._gate_warning_done = True
        logger.warning("RePO: %s", reason)
