"""Hook ``_compute_old_log_prob`` (driver): old log-probs from the training engine for on-policy
rows, the stored behaviour log-probs for replayed rows (so a replayed row's ratio is
pi_theta / pi_behaviour)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from repo_ext.integration.hooks.layout import trainer_pass_layouts
from repo_ext.integration.hooks.step_state import is_bypass_mode
from repo_ext.integration.old_log_prob_metrics import old_log_prob_metrics
from repo_ext.integration.pass_layouts import rows_multiple


def compute_old_log_prob(
    trainer: Any, batch: KVBatchMeta, metrics: dict, verl_pass: Callable[[KVBatchMeta, dict], KVBatchMeta]
) -> KVBatchMeta:
    """Old log-probs of every row of ``batch``; ``verl_pass`` is verl's ``_compute_old_log_prob`` (bound).

    The forward pass skips replayed rows (their log-probs are known), which also keeps verl's
    rollout-vs-actor debug metrics about the on-policy rollout only. When the remaining rows
    cannot be split evenly over the data-parallel ranks, all rows are computed, the replayed
    rows overwritten, and verl's metrics of this pass recomputed over the other rows
    (``old_log_prob_metrics``). In verl's rollout-correction bypass mode no row is computed:
    on-policy rows take their rollout log-probs (as verl does), replayed rows their stored ones.
    """
    state = trainer._step_state
    if state is None or not state.off_keys:
        return verl_pass(batch, metrics)
    if is_bypass_mode(trainer.config):
        # verl's bypass pass runs no forward: old log-probs := rollout log-probs on every row, and
        # on a replayed row those are its stored behaviour log-probs (build_replay_row). No entropy
        # is computed in this mode, so none is written for any row.
        verl_pass(batch, metrics)
        put_stored_log_probs(state, batch.partition_id, with_entropy=False)
        return batch
    off = set(state.off_keys)
    keep = [i for i, key in enumerate(batch.keys) if key not in off]
    old_log_prob_pass = [layout for layout in trainer_pass_layouts(trainer) if layout.name == "old_log_prob"]
    if len(keep) % rows_multiple(old_log_prob_pass) == 0:
        subset = KVBatchMeta(
            keys=[batch.keys[i] for i in keep],
            tags=[batch.tags[i] for i in keep],
            partition_id=batch.partition_id,
            fields=None,
            extra_info=batch.extra_info,
        )
        verl_pass(subset, metrics)
    else:
        verl_pass(batch, {})  # its metrics would include replayed rows: recomputed
        actor = trainer.config.actor_rollout_ref.actor
        metrics.update(old_log_prob_metrics(
            [batch.keys[i] for i in keep], batch.partition_id, loss_agg_mode=actor.loss_agg_mode,
            loss_scale_factor=actor.loss_scale_factor,
            with_rollout_log_probs=bool(trainer.config.actor_rollout_ref.rollout.calculate_log_probs),
        ))
    put_stored_log_probs(state, batch.partition_id, with_entropy=True)
    return KVBatchMeta(
        keys=list(batch.keys), tags=list(batch.tags), partition_id=batch.partition_id, fields=None,
        extra_info=batch.extra_info,
    )


def put_stored_log_probs(state: Any, partition_id: str, *, with_entropy: bool) -> None:
    """Write each replayed row's stored behaviour log-probs (L,) as its ``old_log_probs``; with
    ``with_entropy``, also an all-zero ``entropy`` (L,), because verl's pass wrote that field on
    the other rows and a field must be on every row of the batch."""
    rows = []
    for key in state.off_keys:
        row = {"old_log_probs": state.off_behaviour[key]}
        if with_entropy:
            row["entropy"] = torch.zeros_like(state.off_behaviour[key])
        rows.append(row)
    tq.kv_batch_put(keys=state.off_keys, partition_id=partition_id, fields=list_of_dict_to_tensordict(rows))
