"""The batch layout the actor passes need, read from the trainer's config and worker groups (driver).

Used by the ``_get_required_batch_multiple`` / ``_update_actor`` hooks (``update_actor``) and the
``_compute_old_log_prob`` hook (``old_log_probs``).
"""

from __future__ import annotations

from typing import Any

from repo_ext.integration.hooks.step_state import is_bypass_mode
from repo_ext.integration.pass_layouts import PassLayout, pass_layouts, worker_group_dp_size


def rows_per_mini_batch(config: Any) -> int:
    """verl's optimizer mini-batch in rows, all ranks: ``ppo_mini_batch_size * rollout.n``
    (verl/trainer/ppo/v1/trainer_base.py ``_update_actor``)."""
    return int(config.actor_rollout_ref.actor.ppo_mini_batch_size) * int(config.actor_rollout_ref.rollout.n)


def micro_batch_sizes(trainer: Any) -> dict[str, int | None]:
    """Per-rank micro-batch size of each forward pass over the batch (None: dynamic batch size, or
    a pass that does not run)."""
    arr = trainer.config.actor_rollout_ref
    sizes = {
        "update": None if arr.actor.get("use_dynamic_bsz", False) else arr.actor.get("ppo_micro_batch_size_per_gpu"),
        # bypass mode runs no old-log-prob forward (_compute_old_log_prob): nothing to divide
        "old_log_prob": None
        if arr.rollout.get("log_prob_use_dynamic_bsz", False) or is_bypass_mode(trainer.config)
        else arr.rollout.get("log_prob_micro_batch_size_per_gpu"),
        "ref": None,
    }
    if getattr(trainer, "use_reference_policy", False) and not arr.ref.get("log_prob_use_dynamic_bsz", False):
        sizes["ref"] = arr.ref.get("log_prob_micro_batch_size_per_gpu")
    return sizes


def trainer_pass_layouts(trainer: Any) -> list[PassLayout]:
    """dp size and micro-batch size of each pass, each from its own worker group (``pass_layouts``)."""
    return pass_layouts(
        actor_wg=trainer.actor_rollout_wg,
        ref_wg=trainer.ref_policy_wg if trainer.use_reference_policy else None,
        ref_in_actor=bool(getattr(trainer, "ref_in_actor", False)),
        micro_batch_sizes=micro_batch_sizes(trainer),
    )


def actor_dp_size(trainer: Any) -> int:
    return worker_group_dp_size(trainer.actor_rollout_wg, "actor")
