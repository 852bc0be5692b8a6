"""verl's old-log-prob metrics over the on-policy rows of a RePO batch.

verl's ``_compute_old_log_prob`` (verl/trainer/ppo/v1/trainer_base.py) reports, over the rows it
was given, ``actor/entropy`` and, with ``rollout.calculate_log_probs``, the rollout-vs-actor
comparison ``training/rollout_probs_diff_*`` / ``training/rollout_actor_probs_pearson_corr``
(verl/utils/debug/metrics.py ``calculate_debug_metrics``). They describe the rollout engine against
the training engine, so they must not include replayed rows: their "rollout" log-probs are the
stored behaviour log-probs of an older policy. When the RePO trainer has to run the forward pass
over all rows (see ``RePOTrainer._compute_old_log_prob``), it recomputes these metrics here from
the rows it names, with verl's own functions.
"""

from __future__ import annotations

from typing import Any

import transfer_queue as tq
from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import agg_loss
from verl.utils.debug.metrics import calculate_debug_metrics


def old_log_prob_metrics(
    keys: list[str],
    partition_id: str,
    *,
    loss_agg_mode: str,
    loss_scale_factor: Any,
    with_rollout_log_probs: bool,
) -> dict[str, Any]:
    """verl's old-log-prob metrics over the rows ``keys`` (after their ``old_log_probs`` and
    ``entropy`` were written to TransferQueue), computed as verl computes them."""
    fields = ["entropy", "old_log_probs", "response_mask"]
    if with_rollout_log_probs:
        fields += ["responses", "rollout_log_probs"]
    data = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=fields)
    data = DataProto(batch=data.to_padded_tensor())
    entropy = agg_loss(
        loss_mat=data.batch["entropy"],
        loss_mask=data.batch["response_mask"],
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
    )
    metrics: dict[str, Any] = {"actor/entropy": entropy.detach().item()}
    if with_rollout_log_probs:
        metrics.update(calculate_debug_metrics(data))
    return metrics
