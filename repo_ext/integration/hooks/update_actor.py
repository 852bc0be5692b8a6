"""Hooks ``_get_required_batch_multiple`` and ``_update_actor`` (driver): one optimizer step per
mini-batch as configured, replayed rows enlarging each mini-batch (as in the paper).

The mini-batch size and shuffling of an update are passed to :func:`verl_update_actor` as values;
the trainer's config is never written.
"""

from __future__ import annotations

from typing import Any

from transfer_queue import KVBatchMeta
from verl.utils.metric import reduce_metrics
from verl.utils.py_functional import rename_dict

from repo_ext.algorithm.loss import mean_metrics_from_sums
from repo_ext.integration.batch_layout import replay_batch_layout
from repo_ext.integration.hooks.layout import actor_dp_size, micro_batch_sizes, rows_per_mini_batch, trainer_pass_layouts
from repo_ext.integration.mini_batch_counts import write_mini_batch_counts
from repo_ext.integration.pass_layouts import rows_multiple
from repo_ext.integration.hooks.skip_zero_adv_rows import update_actor_skipping


def required_batch_multiple(trainer: Any, verl_multiple: int) -> int:
    """The batch's row multiple: verl's (``verl_multiple``) without replayed rows; with them, the
    padded size ``num_mb * m`` of ``batch_layout.replay_batch_layout`` (``m`` recorded in the step
    state as the update's mini-batch rows)."""
    state = trainer._step_state
    if state is None or not state.off_keys or trainer.config.trainer.critic_warmup > trainer.global_steps:
        return verl_multiple
    # Replayed rows enlarge each mini-batch instead of adding mini-batches: the number of
    # optimizer steps per training step stays what the user configured (the paper replays into
    # the same optimizer step). Pad the batch to num_mb mini-batches of m rows, m a multiple of
    # every pass's dp x micro-batch size, each pass with its own worker group's dp (pass_layouts).
    num_mb, m = replay_batch_layout(
        len(state.on_keys),
        len(state.off_keys),
        rows_per_mini_batch=rows_per_mini_batch(trainer.config),
        multiple=rows_multiple(trainer_pass_layouts(trainer)),
    )
    state.mini_batch_rows = m
    return m * num_mb


def update_actor(trainer: Any, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
    """The actor update of the step: the mini-batch counts on every row (the loss's seq-mean
    normalisers, ``mini_batch_counts``), then verl's update, without the zero-advantage rows when
    ``trainer.skip_zero_adv_rows`` (``zero_adv_skip``), then the loss's sums turned into means."""
    state, actor = trainer._step_state, trainer.config.actor_rollout_ref.actor
    rows = (state and state.mini_batch_rows) or rows_per_mini_batch(trainer.config)
    if state is not None:
        write_mini_batch_counts(batch, dp_size=actor_dp_size(trainer), mini_batch_rows=rows, shuffle=bool(actor.shuffle),
                                seed=int(actor.data_loader_seed), epochs=int(actor.ppo_epochs), off_keys=set(state.off_keys))

    def update(update_batch: KVBatchMeta, update_metrics: dict, *, mini_batch_rows: int, shuffle: bool) -> KVBatchMeta:
        return verl_update_actor(trainer, update_batch, update_metrics, mini_batch_rows=mini_batch_rows, shuffle=shuffle)

    if trainer.skip_zero_adv_rows:  # zero-advantage rows leave the update (zero_adv_skip)
        batch = update_actor_skipping(
            trainer, batch, metrics, dp_size=actor_dp_size(trainer), update=update, rows_per_mini_batch=rows,
            micro_batch_size=micro_batch_sizes(trainer)["update"],
        )
    else:
        batch = update(batch, metrics, mini_batch_rows=rows, shuffle=bool(actor.shuffle))
    if state is not None:
        mean_metrics_from_sums(metrics, prefix="actor/")  # the loss's sums and counts -> means (loss.SUM_METRICS)
    return batch


def verl_update_actor(trainer: Any, batch: KVBatchMeta, metrics: dict, *, mini_batch_rows: int, shuffle: bool) -> KVBatchMeta:
    """verl's ``PPOTrainer._update_actor`` (verl/trainer/ppo/v1/trainer_base.py, verl 0.9.1) with the
    optimizer mini-batch (``mini_batch_rows`` rows, all ranks) and its shuffling given as values.

    verl's own method reads both from the config (``ppo_mini_batch_size * rollout.n`` and
    ``actor.shuffle``); everything else is as there. Its distillation fields are False: the RePO
    trainer refuses ``distillation.enabled`` (``config_checks.check_repo_trainer_requirements``).
    A verl upgrade must compare this with its ``_update_actor``.
    """
    actor = trainer.config.actor_rollout_ref.actor
    batch.extra_info.update(
        {
            "calculate_entropy": actor.calculate_entropy or (actor.entropy_coeff != 0.0),
            "distillation_use_topk": False,
            "distillation_only": False,
            "global_batch_size": mini_batch_rows,
            "mini_batch_size": mini_batch_rows,
            "epochs": actor.ppo_epochs,
            "seed": actor.data_loader_seed,
            "dataloader_kwargs": {"shuffle": shuffle},
            "temperature": trainer.config.actor_rollout_ref.rollout.temperature,
        }
    )
    output = trainer.actor_rollout_wg.update_actor(batch)
    output = rename_dict(output["metrics"], "actor/")
    output["perf/mfu/actor"] = output.pop("actor/mfu")
    metrics.update(reduce_metrics(output))
    return batch
