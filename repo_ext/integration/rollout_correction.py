"""verl's rollout correction over the on-policy rows of a RePO batch only.

verl's V1 trainer runs its rollout correction (IS weights, rejection sampling and the
``rollout_corr/*`` metrics: verl/trainer/ppo/rollout_corr_helper.py
``compute_rollout_correction_and_add_to_batch``) in ``_compute_advantage`` over every row of the
batch, unless in bypass mode (verl/trainer/ppo/v1/trainer_base.py). It corrects for the rollout
engine sampling from a slightly different policy than the training engine's old policy. A replayed
row has no such gap: its "rollout" log-probs and its old log-probs are both the stored behaviour
log-probs (``replay_rows.build_replay_row``), so its log-ratio is exactly 0 and its IS weight
exactly 1. Over all rows, replayed rows would pull every ``rollout_corr/*`` statistic towards "no
mismatch" and, with ``rollout_is_batch_normalize``, shift the normalisation of the on-policy weights.

So the RePO trainer runs verl's own function on the on-policy rows alone (its metrics then compare
one to one with a GRPO run's) and gives every other row the weight its behaviour policy calls for:
its response mask (1 on each response token of a replayed row, whose behaviour policy is exactly
the stored one; 0 on verl's padding rows, which have no response token), never normalised and never
rejected (its response mask stays as it is).
"""

from __future__ import annotations

from typing import Any

import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl.protocol import DataProto
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.utils.padding import response_to_nested

IS_WEIGHTS_FIELD = "rollout_is_weights"


def rollout_correction_on_policy_rows(
    rollout_corr_config: Any,
    *,
    on_keys: list[str],
    other_keys: list[str],
    partition_id: str,
) -> dict[str, float] | None:
    """Run verl's rollout correction on the rows ``on_keys`` and write its results to TransferQueue.

    Args:
        rollout_corr_config: verl's ``algorithm.rollout_correction`` (decoupled mode).
        on_keys: the on-policy rows (not verl's padding rows, not replayed rows).
        other_keys: every other row of the batch (replayed and padding rows).
        partition_id: the batch's TransferQueue partition.

    Writes, as verl's ``_compute_advantage`` does: ``response_mask`` (rejection sampling applied) of
    the on-policy rows and, when verl computes IS weights (``rollout_is`` set), ``rollout_is_weights``
    (per row (L,), float32) of every row: verl's on the on-policy rows, the row's response mask on
    the others.

    Returns:
        verl's ``rollout_corr/*`` metrics over the on-policy rows; None (nothing written) when the
        on-policy rows carry no ``rollout_log_probs`` (``rollout.calculate_log_probs`` off), where
        verl corrects nothing either.
    """
    fields = ["old_log_probs", "rollout_log_probs", "response_mask"]
    data = tq.kv_batch_get(keys=on_keys, partition_id=partition_id, select_fields=fields)
    if "rollout_log_probs" not in data.keys():
        return None
    nested_mask = data["response_mask"]
    corrected, metrics = compute_rollout_correction_and_add_to_batch(
        DataProto(batch=data.to_padded_tensor()), rollout_corr_config
    )
    out = {"response_mask": response_to_nested(corrected.batch["response_mask"], nested_mask)}
    if IS_WEIGHTS_FIELD in corrected.batch:
        out[IS_WEIGHTS_FIELD] = response_to_nested(corrected.batch[IS_WEIGHTS_FIELD], nested_mask)
        if other_keys:
            masks = tq.kv_batch_get(keys=other_keys, partition_id=partition_id, select_fields=["response_mask"])
            weights = [{IS_WEIGHTS_FIELD: mask.to(torch.float32)} for mask in masks["response_mask"].unbind()]
            tq.kv_batch_put(keys=other_keys, partition_id=partition_id, fields=list_of_dict_to_tensordict(weights))
    tq.kv_batch_put(keys=on_keys, partition_id=partition_id, fields=TensorDict(out, batch_size=len(on_keys)))
    return metrics
