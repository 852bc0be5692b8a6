"""After verl's ``_step_once`` (driver): this step's on-policy rows go into the replay store.

Response ids, the training engine's old log-probs and rewards. A step never replays its own
samples (insert comes after inject), and replayed rows are never re-inserted.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import transfer_queue as tq
from transfer_queue import KVBatchMeta

from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.replay_rows import canonical_insert_order


def insert_on_policy_rows(
    store: ReplayStore,
    *,
    prompt_keys: list[str],
    responses: list[torch.Tensor] | tuple[torch.Tensor, ...],
    response_masks: list[torch.Tensor] | tuple[torch.Tensor, ...],
    behaviour_log_probs: list[torch.Tensor] | tuple[torch.Tensor, ...],
    token_scores: list[torch.Tensor] | tuple[torch.Tensor, ...],
    step: int,
    max_response_length: int,
    counters: dict[str, int],
) -> int:
    """Insert one step's on-policy rows into the store; returns how many were stored.

    Per row: response ids (L,), response mask (L,), the training engine's old log-probs (L,) and
    token-level scores (L,) whose sum is the reward. The response mask is stored with the response
    (``ReplayStore.insert(loss_mask=...)``) and a replayed row gets it back exactly: a multi-turn
    (tool-calling) response keeps its tool tokens out of the loss. Old log-probs on the mask's 0
    tokens are never used by the loss; the non-finite ones among them are stored as 0.0 (the store
    holds finite values only). Rows that cannot be replayed faithfully are counted in ``counters``
    under the reason and not stored (never silently):

    - ``empty_response``: no token to score a ratio on;
    - ``no_loss_tokens``: a response whose mask is all zero (e.g. only tool output), nothing to train on;
    - ``nonfinite_reward`` (NaN/inf reward: the reward function failed) and ``nonfinite_log_prob``
      (a NaN/inf old log-prob on a token of the loss).

    Rows cut at ``max_response_length`` are stored (as the reference does) and counted under
    ``truncated_at_max_length``.
    """
    stored = 0
    for i, pkey in enumerate(prompt_keys):
        ids, mask, logp = responses[i], response_masks[i], behaviour_log_probs[i]
        reward = float(token_scores[i].sum())
        if ids.numel() == 0:
            counters["empty_response"] += 1
            continue
        if ids.shape != logp.shape or ids.shape != mask.shape:
            raise ValueError(
                f"row {i}: responses {tuple(ids.shape)}, response_mask {tuple(mask.shape)} and old_log_probs "
                f"{tuple(logp.shape)} must have the same length"
            )
        loss_tokens = mask.bool()
        if not bool(loss_tokens.any()):
            counters["no_loss_tokens"] += 1
            continue
        if not math.isfinite(reward):
            counters["nonfinite_reward"] += 1
            continue
        finite = torch.isfinite(logp)
        if not bool(finite[loss_tokens].all()):
            counters["nonfinite_log_prob"] += 1
            continue
        if ids.numel() >= max_response_length:
            counters["truncated_at_max_length"] += 1
        logp = logp.to(torch.float32).masked_fill(~finite, 0.0)  # only tokens outside the loss can be hit
        store.insert(pkey, ids.to(torch.int32).numpy(), logp.numpy(), reward, step, loss_mask=loss_tokens.numpy())
        stored += 1
    return stored


def insert_step_rows(trainer: Any, batch: KVBatchMeta) -> None:
    """The step's on-policy rows (``trainer._step_state.on_keys``) into ``trainer.replay_store``."""
    state = trainer._step_state
    if not state.on_keys or trainer.repo_config.strategy == "none":
        return
    data = tq.kv_batch_get(
        keys=state.on_keys,
        partition_id=batch.partition_id,
        select_fields=["responses", "response_mask", "old_log_probs", "rm_scores"],
    )
    responses = data["responses"].unbind()
    masks = data["response_mask"].unbind()
    logps = data["old_log_probs"].unbind()
    scores = data["rm_scores"].unbind()
    prompt_keys = [state.prompt_key_of[key] for key in state.on_keys]
    # A prompt's samples of one step enter the store in the order of a seeded hash of their
    # responses, not in the order the rollout returned them (request timing): FIFO ties
    # (recent_k, highest_k and max_variance_k among equal rewards) and FIFO eviction then pick
    # the same samples in two runs that generated the same responses, with no preference for
    # any content (a token order would always keep the lexicographically largest answer longest).
    order = canonical_insert_order(prompt_keys, responses, masks, seed=trainer.repo_config.seed)
    insert_on_policy_rows(
        trainer.replay_store,
        prompt_keys=[prompt_keys[i] for i in order],
        responses=[responses[i] for i in order],
        response_masks=[masks[i] for i in order],
        behaviour_log_probs=[logps[i] for i in order],
        token_scores=[scores[i] for i in order],
        step=trainer.global_steps,
        max_response_length=int(trainer.config.data.max_response_length),
        counters=trainer._bad_rows,
    )


def store_metrics(trainer: Any) -> dict[str, float]:
    """``repo/store_*`` (the store's numeric stats) and ``repo/bad_rows_*`` (rows not stored, run-long)."""
    stats = trainer.replay_store.stats()
    out = {f"repo/store_{k}": float(v) for k, v in stats.items() if isinstance(v, (int, float))}
    out.update({f"repo/bad_rows_{k}": float(v) for k, v in trainer._bad_rows.items()})
    return out
