"""The RePO trainer: verl's synchronous V1 trainer with a replay store attached.

Selected with ``trainer.v1.trainer_mode=repo_sync`` (the RePO configs set it). Every override below
is one verl hook and calls one module of ``integration/hooks/``; all of it runs on the driver (verl's
TaskRunner), and the ``repo`` loss runs on the actor's workers (``estimators.RePOLossFunction``).
One training step, in verl's order (verl/trainer/ppo/v1/trainer_base.py ``_step_once``):

1. verl's replay buffer samples: generate and score the on-policy rows (verl, unchanged);
2. ``_balance_batch`` -> ``hooks.inject_replays``: add replayed rows (stored rewards and behaviour
   log-probs) before verl's dp balancing;
3. ``_get_required_batch_multiple`` (inside verl's ``_balance_batch``) -> ``hooks.update_actor``:
   pad to the configured number of mini-batches, each enlarged by the replayed rows;
4. ``_compute_old_log_prob`` -> ``hooks.old_log_probs``: the engine's log-probs on on-policy rows,
   the stored behaviour log-probs on replayed rows (ratio pi_theta / pi_behaviour);
5. ``_compute_advantage`` -> ``hooks.advantage_metrics``: ``repo_split`` advantages (``estimators``),
   verl's rollout correction over on-policy rows only, ``repo/nonzero_adv_*``, the row dump;
6. ``_update_actor`` -> ``hooks.update_actor``: mini-batch counts, verl's update (without
   zero-advantage rows: ``zero_adv_skip``) with the ``repo`` loss on the workers;
7. after ``_step_once`` -> ``hooks.insert``: this step's on-policy rows into the store;
8. ``_compute_metrics`` (here): verl's data metrics over the on-policy rows only.

A step never replays its own samples (7 comes after 2), and replayed rows are never re-inserted. The
store is saved with every verl checkpoint and restored on resume (``hooks.checkpoints``); the
config is validated before any worker starts (``config_checks``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from omegaconf import DictConfig, open_dict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration import estimators
from repo_ext.integration.config_checks import (
    STORE_BYTES_PER_TOKEN,
    check_text_only_model,
    repo_sync_trainer_settings,
    validate_trainer_config,
)
from repo_ext.integration.estimators import TRAINER_MODE, RePOLossFunction, repo_config_from_algorithm
from repo_ext.integration.hooks import advantage_metrics, checkpoints, insert, inject_replays, old_log_probs, update_actor
from repo_ext.integration.hooks.step_state import StepState
from repo_ext.integration.replay_health import replay_outlook
from repo_ext.integration.rollout_dump import mark_replayed_rows
from repo_ext.integration.zero_adv_skip import resolve_skip_zero_advantage_rows

logger = logging.getLogger(__name__)


@register_trainer(TRAINER_MODE)
class RePOTrainer(PPOTrainerSync):
    """verl's ``PPOTrainerSync`` plus a replay store. See the module docstring."""

    #: the step after which the store started empty: 0, or the resumed step of a warm start from a
    #: checkpoint without a store (algorithm.repo.missing_store_on_resume=empty); the gate counts from it
    _store_start_step: int = 0

    def __init__(self, config: DictConfig):
        repo = repo_config_from_algorithm(config.algorithm)
        validate_trainer_config(config, repo)
        skip_zero_adv_rows = resolve_skip_zero_advantage_rows(config, repo.skip_zero_advantage_rows)
        # verl's base trainer branches on ``trainer_mode == "sync"`` in several places (replay
        # buffer class, checkpoint TQ state, in-flight re-issue: trainer_base.py). RePO is a sync
        # trainer, so from here on the config says "sync"; the registry lookup already happened.
        with open_dict(config):  # trainer.v1.repo_sync.* apply as verl's trainer.v1.sync.* (config_checks)
            config.trainer.v1.sync = repo_sync_trainer_settings(config)
            config.trainer.v1.trainer_mode = "sync"
        super().__init__(config)
        estimators.mark_repo_trainer_running()
        self.repo_config = repo
        self.skip_zero_adv_rows = skip_zero_adv_rows
        self.replay_store = ReplayStore(
            max_cache_size=repo.max_cache_size,
            min_cache_to_replay=repo.min_cache_to_replay,
            max_store_bytes=repo.max_store_bytes,
            seed=repo.seed,
        )
        self._step_state: StepState | None = None
        self._bad_rows: dict[str, int] = defaultdict(int)
        self._total_injected = 0
        self._gate_warning_done = False

    # ------------------------------------------------------------------ set-up

    def on_init_end(self):
        super().on_init_end()
        from verl.utils.config import omega_conf_to_dataclass

        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(RePOLossFunction(actor_config, self.repo_config))  # runs on the workers

    def _init_tokenizer(self):
        super()._init_tokenizer()  # the first thing verl's init() does: refuse a VLM before any worker starts
        check_text_only_model(self.processor, self.config.actor_rollout_ref.model.path, self.repo_config)

    def _init_dataloader(self):
        super()._init_dataloader()  # verl's: train_dataset, steps_per_epoch, total_training_steps
        self._report_replay_outlook()

    def _report_replay_outlook(self) -> None:
        """Print the step at which replay can first happen; warn when the run ends before it, or the
        byte cap may evict entries before they reach the gate (``replay_health.replay_outlook``)."""
        cfg, repo = self.config, self.repo_config
        outlook = replay_outlook(
            strategy=repo.strategy,
            dataset_prompts=len(self.train_dataset),
            train_batch_size=int(cfg.data.train_batch_size),
            drop_last=bool(getattr(self.train_dataloader, "drop_last", True)),
            total_epochs=int(cfg.trainer.total_epochs),
            total_training_steps=cfg.trainer.get("total_training_steps", None),
            rollout_n=int(cfg.actor_rollout_ref.rollout.n),
            min_cache_to_replay=repo.min_cache_to_replay,
            max_cache_size=repo.max_cache_size,
            max_store_bytes=repo.max_store_bytes,
            max_response_length=int(cfg.data.max_response_length),
            bytes_per_token=STORE_BYTES_PER_TOKEN,
            store_start_step=self._store_start_step,
        )
        print(outlook.summary(), flush=True)  # shown whatever the log level, as verl prints its own set-up
        warning = outlook.warning()
        if warning is not None:
            logger.warning("RePO: %s", warning)

    # ------------------------------------------------------------------ one step, in verl's order

    def _step_once(self, metrics: dict, timing_raw: dict, sample_batch_size: int) -> KVBatchMeta:
        self._step_state = state = StepState()
        batch = super()._step_once(metrics, timing_raw, sample_batch_size)  # steps 1-6 below
        start = time.perf_counter()
        insert.insert_step_rows(self, batch)  # 7
        state.store_seconds += time.perf_counter() - start
        metrics.update(state.metrics)
        metrics.update(self._store_metrics())
        timing_raw["repo_store"] = state.store_seconds
        return batch

    def _store_metrics(self) -> dict[str, float]:
        return insert.store_metrics(self)

    def _balance_batch(self, batch: KVBatchMeta, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        state = self._step_state
        if state is not None and not state.injected:  # 2 (verl may balance again later: inject once)
            start = time.perf_counter()
            batch = inject_replays.inject_replays(self, batch)
            state.injected = True
            state.store_seconds += time.perf_counter() - start
        return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)

    def _check_replay_alive(self) -> None:
        inject_replays.check_replay_alive(self)

    def _get_required_batch_multiple(self, dp_size: int) -> int:  # 3, inside verl's _balance_batch
        return update_actor.required_batch_multiple(self, super()._get_required_batch_multiple(dp_size))

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:  # 4
        return old_log_probs.compute_old_log_prob(self, batch, metrics, verl_pass=super()._compute_old_log_prob)

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:  # 5
        return advantage_metrics.compute_advantage(self, batch, metrics, verl_pass=PPOTrainerSync._compute_advantage)

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:  # 6
        return update_actor.update_actor(self, batch, metrics)

    def _compute_metrics(self, batch: KVBatchMeta, metrics, timing_raw, global_steps, epoch):  # 8
        """verl's data metrics (score, response length, ...) describe the on-policy rollout only, so
        they compare one to one with a GRPO run; replay has its own ``repo/*`` metrics."""
        state = self._step_state
        if state is not None and state.off_keys:
            off = set(state.off_keys)
            keep = [i for i, k in enumerate(batch.keys) if k not in off]
            batch = KVBatchMeta(
                keys=[batch.keys[i] for i in keep],
                tags=[batch.tags[i] for i in keep],
                partition_id=batch.partition_id,
                fields=batch.fields,
                extra_info=batch.extra_info,
            )
        return super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)

    def _dump_generations(self, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path):
        # verl's rollout dump (trainer.rollout_data_dir), with replayed rows marked (rollout_dump)
        extra = mark_replayed_rows(reward_extra_infos_dict)
        return super()._dump_generations(inputs, outputs, gts, scores, extra, dump_path)

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self):
        checkpoints.save_store(self)  # first: see hooks.checkpoints
        return super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps > 0:
            checkpoints.resume_store(self)
