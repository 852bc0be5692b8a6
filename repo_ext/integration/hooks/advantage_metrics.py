"""Hook ``_compute_advantage`` (driver): verl's advantages (``repo_split`` groups replayed rows
apart, ``estimators``), with verl's rollout correction over the on-policy rows only, then the
step's ``repo/nonzero_adv_group_frac_*`` metrics and, when asked, the row dump."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch
import transfer_queue as tq
from omegaconf import DictConfig, open_dict
from transfer_queue import KVBatchMeta

from repo_ext.algorithm.advantages import nonzero_advantage_group_fraction
from repo_ext.integration.hooks.row_dump import DUMP_DIR_ENV, dump_step_rows
from repo_ext.integration.hooks.step_state import column_strings, is_bypass_mode
from repo_ext.integration.replay_rows import split_uid
from repo_ext.integration.rollout_correction import rollout_correction_on_policy_rows

#: verl's ``PPOTrainer._compute_advantage``, unbound: (trainer, batch, metrics) -> batch
VerlComputeAdvantage = Callable[[Any, KVBatchMeta, dict], KVBatchMeta]


class _WithConfig:
    """The trainer as verl's ``_compute_advantage`` sees it, with another config.

    verl's ``_compute_advantage`` (verl/trainer/ppo/v1/trainer_base.py) takes no argument for the
    rollout correction: it reads ``self.config.algorithm.rollout_correction`` and, when set, corrects
    every row. It reads ``self.config`` and ``self.kl_ctrl_in_reward`` and assigns no attribute, so
    it runs on this view: its own per-call config, every other attribute the trainer's. The
    trainer's config is never written.
    """

    def __init__(self, trainer: Any, config: DictConfig):
        self._trainer = trainer
        self.config = config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)


def without_rollout_correction(config: DictConfig) -> DictConfig:
    """A copy of verl's config with ``algorithm.rollout_correction=None`` (the original is untouched)."""
    copied = copy.deepcopy(config)
    with open_dict(copied):
        copied.algorithm.rollout_correction = None
    return copied


def compute_advantage(trainer: Any, batch: KVBatchMeta, metrics: dict, verl_pass: VerlComputeAdvantage) -> KVBatchMeta:
    """Advantages of every row of ``batch`` (verl's ``verl_pass``), plus the step's RePO metrics."""
    if _rollout_correction_on_policy_rows(trainer, batch, metrics):
        # done above over the on-policy rows: verl's pass must not correct all rows again
        batch = verl_pass(_WithConfig(trainer, without_rollout_correction(trainer.config)), batch, metrics)
    else:
        batch = verl_pass(trainer, batch, metrics)
    state = trainer._step_state
    if state is None:
        return batch
    real_keys = state.on_keys + state.off_keys
    data = tq.kv_batch_get(keys=real_keys, partition_id=batch.partition_id, select_fields=["advantages", "uid"])
    adv = data["advantages"]
    # a row's advantage is constant over its tokens; any non-zero token marks a non-zero row
    row_adv = torch.tensor([float(a.abs().max()) if a.numel() else 0.0 for a in adv.unbind()])
    uids = column_strings(data["uid"])
    groups, off = zip(*(split_uid(u) for u in uids), strict=True)
    fractions = nonzero_advantage_group_fraction(row_adv, list(groups), torch.tensor(off, dtype=torch.bool))
    if not state.off_keys:
        fractions.pop("off")  # no replayed group this step: nothing to report (not 0)
    state.metrics.update({f"repo/nonzero_adv_group_frac_{k}": float(v) for k, v in fractions.items()})
    dump_dir = os.environ.get(DUMP_DIR_ENV)
    if dump_dir:
        dump_step_rows(dump_dir, batch.partition_id, real_keys, state.prompt_key_of, trainer.global_steps)
    return batch


def _rollout_correction_on_policy_rows(trainer: Any, batch: KVBatchMeta, metrics: dict) -> bool:
    """verl's rollout correction (decoupled mode) over the on-policy rows only, replayed and padding
    rows weighted by their response mask (``rollout_correction``); whether it ran."""
    state = trainer._step_state
    rollout_corr = trainer.config.algorithm.get("rollout_correction", None)
    if state is None or not state.off_keys or rollout_corr is None or is_bypass_mode(trainer.config):
        return False  # verl's own pass is right: no replayed row, or (bypass) no correction here
    on = set(state.on_keys)
    corr_metrics = rollout_correction_on_policy_rows(
        rollout_corr, on_keys=state.on_keys, other_keys=[k for k in batch.keys if k not in on],
        partition_id=batch.partition_id,
    )
    if corr_metrics is None:
        return False
    metrics.update(corr_metrics)
    return True
