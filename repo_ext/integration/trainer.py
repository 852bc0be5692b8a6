"""The RePO trainer: verl's synchronous V1 trainer with a replay store attached.

Selected with ``trainer.v1.trainer_mode=repo_sync`` (the RePO configs set it). One training step:

1. verl generates and scores the on-policy rows (unchanged);
2. **inject** (before verl's dp balancing): for each prompt of the batch, retrieve past responses
   from the :class:`~repo_ext.algorithm.store.ReplayStore` (key: hash of the prompt tokens) and add
   them as extra rows carrying their stored rewards and stored behaviour log-probs;
3. verl computes old log-probs for all rows with the training engine; on replayed rows they are
   then **overwritten with the stored behaviour log-probs** (so the ratio is pi_theta / pi_behaviour);
4. advantages by ``repo_split`` (replayed rows grouped apart, see ``estimators``);
5. the actor update with the ``repo`` loss; the number of optimizer steps per training step is the
   same as without replay (replayed rows enlarge each mini-batch, as in the paper);
6. **insert** this step's on-policy rows (response ids, the engine's old log-probs, rewards) into
   the store. A step never replays its own samples, and replayed rows are never re-inserted.

The store is saved with every verl checkpoint and restored on resume (``store_checkpoint``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, open_dict

import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from repo_ext.algorithm.advantages import nonzero_advantage_group_fraction
from repo_ext.algorithm.loss import mean_metrics_from_sums
from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration import estimators
from repo_ext.integration.batch_layout import replay_batch_layout
from repo_ext.integration.config_checks import (  # validate_trainer_config: also the launch check's
    STORE_BYTES_PER_TOKEN,
    check_text_only_model,
    repo_sync_trainer_settings,
    validate_trainer_config,
)
from repo_ext.integration.mini_batch_counts import write_mini_batch_counts
from repo_ext.integration.estimators import TRAINER_MODE, RePOLossFunction, repo_config_from_algorithm
from repo_ext.integration.replay_rows import (
    NORM_OFF_FIELD,
    NORM_ON_FIELD,
    OFF_POLICY_FIELD,
    build_replay_row,
    canonical_insert_order,
    prompt_key,
    split_uid,
)
from repo_ext.integration.replay_health import replay_outlook, replay_stall_reason
from repo_ext.integration.old_log_prob_metrics import old_log_prob_metrics
from repo_ext.integration.pass_layouts import pass_layouts, rows_multiple, worker_group_dp_size
from repo_ext.integration.replay_counters import counters_extra, restore_counters, restore_store_start_step
from repo_ext.integration.replay_rows import REPLAY_SESSION_BASE, replay_row_key
from repo_ext.integration.rollout_correction import rollout_correction_on_policy_rows
from repo_ext.integration.rollout_dump import mark_replayed_rows
from repo_ext.integration.zero_adv_skip import resolve_skip_zero_advantage_rows, update_actor_skipping
from repo_ext.integration.store_checkpoint import (
    STORE_ON_RESUME_SETTING,
    has_store_state,
    load_store_state,
    save_store_state,
    store_on_resume,
    store_path,
)

logger = logging.getLogger(__name__)

#: when set, every step's rows (ids, old log-probs, advantages, rewards, flags) are saved there
DUMP_DIR_ENV = "REPO_EXT_DUMP_DIR"


@dataclass
class _StepState:
    """What one training step knows about its rows."""

    on_keys: list[str] = field(default_factory=list)
    off_keys: list[str] = field(default_factory=list)
    prompt_key_of: dict[str, str] = field(default_factory=dict)  # on-policy TQ key -> prompt key
    off_behaviour: dict[str, torch.Tensor] = field(default_factory=dict)  # off TQ key -> stored log-probs
    mini_batch_rows: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    injected: bool = False
    store_seconds: float = 0.0


def _strings(values: Any) -> list[str]:
    """A TQ non-tensor column (NonTensorStack, or tensordict's LinkedList when read back) as strings."""
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    return [str(v) for v in values]


def is_bypass_mode(config: DictConfig) -> bool:
    """verl's rollout-correction bypass mode: old log-probs are the rollout's, no forward pass
    (the test verl's V1 trainer makes in ``_compute_old_log_prob`` and ``_compute_advantage``)."""
    algorithm = config.get("algorithm", None)
    rollout_corr = None if algorithm is None else algorithm.get("rollout_correction", None)
    return bool(rollout_corr is not None and rollout_corr.get("bypass_mode", False))


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
        self._step_state: _StepState | None = None
        self._bad_rows: dict[str, int] = defaultdict(int)
        self._total_injected = 0
        self._gate_warning_done = False

    # ------------------------------------------------------------------ set-up / hooks

    def on_init_end(self):
        super().on_init_end()
        from verl.utils.config import omega_conf_to_dataclass

        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(RePOLossFunction(actor_config, self.repo_config))

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

    def _init_tokenizer(self):
        super()._init_tokenizer()  # the first thing verl's init() does: refuse a VLM before any worker starts
        check_text_only_model(self.processor, self.config.actor_rollout_ref.model.path, self.repo_config)

    def _step_once(self, metrics: dict, timing_raw: dict, sample_batch_size: int) -> KVBatchMeta:
        self._step_state = _StepState()
        batch = super()._step_once(metrics, timing_raw, sample_batch_size)
        state = self._step_state
        start = time.perf_counter()
        self._insert_on_policy_rows(batch)
        state.store_seconds += time.perf_counter() - start
        metrics.update(state.metrics)
        metrics.update(self._store_metrics())
        timing_raw["repo_store"] = state.store_seconds
        return batch

    # ------------------------------------------------------------------ 2. inject

    def _balance_batch(self, batch: KVBatchMeta, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        state = self._step_state
        if state is not None and not state.injected:
            start = time.perf_counter()
            batch = self._inject_replays(batch)
            state.injected = True
            state.store_seconds += time.perf_counter() - start
        return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)

    def _inject_replays(self, batch: KVBatchMeta) -> KVBatchMeta:
        state = self._step_state
        repo = self.repo_config
        pid = batch.partition_id
        state.on_keys = list(batch.keys)
        data = tq.kv_batch_get(keys=state.on_keys, partition_id=pid, select_fields=["prompts", "uid"])
        uids = _strings(data["uid"])
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
        new_keys, new_rows, new_tags, staleness = [], [], [], []
        key_index = {k: i for i, k in enumerate(batch.keys)}
        retrieved = []
        for pkey, keys in rows_of_prompt.items():
            if len(uid_of_prompt[pkey]) > 1:
                self._bad_rows["duplicate_prompt_groups"] += len(uid_of_prompt[pkey]) - 1
            entries = self.replay_store.retrieve(pkey, repo.strategy, repo.num_replays)
            if entries:
                retrieved.append((pkey, keys[0], entries))
        prompts_with_replay = len(retrieved)
        # one read of every field of one on-policy row per replayed prompt (the row templates)
        templates = (
            tq.kv_batch_get(keys=[template_key for _, template_key, _ in retrieved], partition_id=pid)
            if retrieved
            else None
        )
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
                staleness.append(self.global_steps - entry.step)

        n_on, n_off = len(state.on_keys), len(new_keys)
        state.off_keys = new_keys
        norm_on, norm_off = self._paper_normalisers(n_on, n_off)
        for row in new_rows:
            row[NORM_ON_FIELD] = torch.tensor(norm_on, dtype=torch.float32)
            row[NORM_OFF_FIELD] = torch.tensor(norm_off, dtype=torch.float32)
        on_fields = list_of_dict_to_tensordict(
            [
                {
                    OFF_POLICY_FIELD: torch.tensor(0, dtype=torch.int64),
                    NORM_ON_FIELD: torch.tensor(norm_on, dtype=torch.float32),
                    NORM_OFF_FIELD: torch.tensor(norm_off, dtype=torch.float32),
                }
                for _ in state.on_keys
            ]
        )
        tq.kv_batch_put(keys=state.on_keys, partition_id=pid, fields=on_fields)
        if new_rows:
            tq.kv_batch_put(keys=new_keys, partition_id=pid, fields=list_of_dict_to_tensordict(new_rows), tags=new_tags)
        self._total_injected += n_off

        num_prompts = max(len(rows_of_prompt), 1)
        state.metrics.update(
            {
                "repo/replayed_rows": float(n_off),
                "repo/on_policy_rows": float(n_on),
                "repo/prompts_with_replay": float(prompts_with_replay),
                "repo/prompts_with_replay_frac": prompts_with_replay / num_prompts,
                "repo/staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
                "repo/staleness_max": float(np.max(staleness)) if staleness else 0.0,
            }
        )
        self._check_replay_alive()
        return KVBatchMeta(
            keys=list(batch.keys) + new_keys,
            tags=list(batch.tags) + new_tags,
            partition_id=pid,
            fields=None,
            extra_info=batch.extra_info,
        )

    def _paper_normalisers(self, n_on: int, n_off: int) -> tuple[float, float]:
        """Expected on/off row counts per optimizer mini-batch (for ``loss_weighting=paper``).

        Exact when a training step is one optimizer step (the paper's setting: one mini-batch);
        with several shuffled mini-batches they are the step's counts divided evenly.
        """
        num_mb = self._num_mini_batches(n_on)
        return n_on / num_mb, n_off / num_mb

    def _num_mini_batches(self, n_on: int) -> int:
        return replay_batch_layout(n_on, 0, rows_per_mini_batch=self._rows_per_mini_batch(), multiple=1)[0]

    def _rows_per_mini_batch(self) -> int:
        return int(self.config.actor_rollout_ref.actor.ppo_mini_batch_size) * int(self.config.actor_rollout_ref.rollout.n)

    def _micro_batch_sizes(self) -> dict[str, int | None]:
        """Per-rank micro-batch size of each forward pass over the batch (None: dynamic batch size, or
        a pass that does not run)."""
        arr = self.config.actor_rollout_ref
        sizes = {
            "update": None if arr.actor.get("use_dynamic_bsz", False) else arr.actor.get("ppo_micro_batch_size_per_gpu"),
            # bypass mode runs no old-log-prob forward (_compute_old_log_prob): nothing to divide
            "old_log_prob": None
            if arr.rollout.get("log_prob_use_dynamic_bsz", False) or is_bypass_mode(self.config)
            else arr.rollout.get("log_prob_micro_batch_size_per_gpu"),
            "ref": None,
        }
        if getattr(self, "use_reference_policy", False) and not arr.ref.get("log_prob_use_dynamic_bsz", False):
            sizes["ref"] = arr.ref.get("log_prob_micro_batch_size_per_gpu")
        return sizes

    def _check_replay_alive(self) -> None:
        """Warn loudly (once) and log ``repo/replay_stalled`` while replay is configured on but nothing
        has been injected after the gate should have opened; the reason comes from ``replay_health``."""
        repo = self.repo_config
        steps_per_epoch = max(int(getattr(self, "steps_per_epoch", 1) or 1), 1)
        train_dataset = getattr(self, "train_dataset", None)
        reason = replay_stall_reason(
            strategy=repo.strategy,
            global_step=self.global_steps,
            total_injected=self._total_injected,
            min_cache_to_replay=repo.min_cache_to_replay,
            rollout_n=int(self.config.actor_rollout_ref.rollout.n),
            steps_per_epoch=steps_per_epoch,
            store_stats=self.replay_store.stats(),
            bad_rows=self._bad_rows,
            dataset_prompts=None if train_dataset is None else len(train_dataset),
            store_start_step=self._store_start_step,
        )
        self._step_state.metrics["repo/replay_stalled"] = float(reason is not None)
        self._step_state.metrics["repo/store_start_step"] = float(self._store_start_step)
        if reason is not None and not self._gate_warning_done:
            self._gate_warning_done = True
            logger.warning("RePO: %s", reason)

    # ------------------------------------------------------------------ 3. stored log-probs

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """Old log-probs from the training engine for on-policy rows, stored ones for replayed rows.

        The forward pass skips replayed rows (their log-probs are known), which also keeps verl's
        rollout-vs-actor debug metrics about the on-policy rollout only. When the remaining rows
        cannot be split evenly over the data-parallel ranks, all rows are computed, the replayed
        rows overwritten, and verl's metrics of this pass recomputed over the other rows
        (``old_log_prob_metrics``). In verl's rollout-correction bypass mode no row is computed:
        on-policy rows take their rollout log-probs (as verl does), replayed rows their stored ones.
        """
        state = self._step_state
        if state is None or not state.off_keys:
            return super()._compute_old_log_prob(batch, metrics)
        if is_bypass_mode(self.config):
            # verl's bypass pass runs no forward: old log-probs := rollout log-probs on every row, and
            # on a replayed row those are its stored behaviour log-probs (build_replay_row). No entropy
            # is computed in this mode, so none is written for any row.
            super()._compute_old_log_prob(batch, metrics)
            self._put_stored_log_probs(batch.partition_id, with_entropy=False)
            return batch
        off = set(state.off_keys)
        keep = [i for i, key in enumerate(batch.keys) if key not in off]
        old_log_prob_pass = [layout for layout in self._pass_layouts() if layout.name == "old_log_prob"]
        if len(keep) % rows_multiple(old_log_prob_pass) == 0:
            subset = KVBatchMeta(
                keys=[batch.keys[i] for i in keep],
                tags=[batch.tags[i] for i in keep],
                partition_id=batch.partition_id,
                fields=None,
                extra_info=batch.extra_info,
            )
            super()._compute_old_log_prob(subset, metrics)
        else:
            super()._compute_old_log_prob(batch, {})  # its metrics would include replayed rows: recomputed
            actor = self.config.actor_rollout_ref.actor
            metrics.update(old_log_prob_metrics(
                [batch.keys[i] for i in keep], batch.partition_id, loss_agg_mode=actor.loss_agg_mode,
                loss_scale_factor=actor.loss_scale_factor,
                with_rollout_log_probs=bool(self.config.actor_rollout_ref.rollout.calculate_log_probs),
            ))
        self._put_stored_log_probs(batch.partition_id, with_entropy=True)
        return KVBatchMeta(
            keys=list(batch.keys), tags=list(batch.tags), partition_id=batch.partition_id, fields=None,
            extra_info=batch.extra_info,
        )

    def _put_stored_log_probs(self, partition_id: str, *, with_entropy: bool) -> None:
        """Write each replayed row's stored behaviour log-probs (L,) as its ``old_log_probs``; with
        ``with_entropy``, also an all-zero ``entropy`` (L,), because verl's pass wrote that field on
        the other rows and a field must be on every row of the batch."""
        state = self._step_state
        rows = []
        for key in state.off_keys:
            row = {"old_log_probs": state.off_behaviour[key]}
            if with_entropy:
                row["entropy"] = torch.zeros_like(state.off_behaviour[key])
            rows.append(row)
        tq.kv_batch_put(keys=state.off_keys, partition_id=partition_id, fields=list_of_dict_to_tensordict(rows))

    def _actor_dp_size(self) -> int:
        return worker_group_dp_size(self.actor_rollout_wg, "actor")

    def _pass_layouts(self):
        """dp size and micro-batch size of each pass, each from its own worker group (pass_layouts)."""
        return pass_layouts(
            actor_wg=self.actor_rollout_wg,
            ref_wg=self.ref_policy_wg if self.use_reference_policy else None,
            ref_in_actor=bool(getattr(self, "ref_in_actor", False)),
            micro_batch_sizes=self._micro_batch_sizes(),
        )

    # ------------------------------------------------------------------ 4. advantage metrics

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self._rollout_correction_on_policy_rows(batch, metrics):
            with self._verl_rollout_correction_off():  # done above, over the on-policy rows
                batch = super()._compute_advantage(batch, metrics)
        else:
            batch = super()._compute_advantage(batch, metrics)
        state = self._step_state
        if state is None:
            return batch
        real_keys = state.on_keys + state.off_keys
        data = tq.kv_batch_get(keys=real_keys, partition_id=batch.partition_id, select_fields=["advantages", "uid"])
        adv = data["advantages"]
        # a row's advantage is constant over its tokens; any non-zero token marks a non-zero row
        row_adv = torch.tensor([float(a.abs().max()) if a.numel() else 0.0 for a in adv.unbind()])
        uids = _strings(data["uid"])
        groups, off = zip(*(split_uid(u) for u in uids), strict=True)
        fractions = nonzero_advantage_group_fraction(row_adv, list(groups), torch.tensor(off, dtype=torch.bool))
        if not state.off_keys:
            fractions.pop("off")  # no replayed group this step: nothing to report (not 0)
        state.metrics.update({f"repo/nonzero_adv_group_frac_{k}": float(v) for k, v in fractions.items()})
        dump_dir = os.environ.get(DUMP_DIR_ENV)
        if dump_dir:
            self._dump_step_rows(dump_dir, batch.partition_id, real_keys)
        return batch

    def _rollout_correction_on_policy_rows(self, batch: KVBatchMeta, metrics: dict) -> bool:
        """verl's rollout correction (decoupled mode) over the on-policy rows only, replayed and padding
        rows weighted by their response mask (``rollout_correction``); whether it ran."""
        state = self._step_state
        rollout_corr = self.config.algorithm.get("rollout_correction", None)
        if state is None or not state.off_keys or rollout_corr is None or is_bypass_mode(self.config):
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

    @contextmanager
    def _verl_rollout_correction_off(self):
        """For this call only, no ``algorithm.rollout_correction``: verl's _compute_advantage then skips
        its rollout correction over all rows (verl/trainer/ppo/v1/trainer_base.py)."""
        algorithm = self.config.algorithm
        saved = algorithm.rollout_correction
        with open_dict(self.config):
            algorithm.rollout_correction = None
        try:
            yield
        finally:
            with open_dict(self.config):
                algorithm.rollout_correction = saved

    def _dump_step_rows(self, dump_dir: str, partition_id: str, keys: list[str]) -> None:
        """Debugging aid (``REPO_EXT_DUMP_DIR``): this step's rows as the actor will see them."""
        # (verl's V1 rows carry no attention_mask: every token of a row is attended to)
        tensors = ["responses", "response_mask", "loss_mask", "position_ids", "old_log_probs", "advantages", "rm_scores"]
        fields = ["uid", *tensors, OFF_POLICY_FIELD]
        data = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=fields)
        rows = {
            "keys": list(keys),
            "uid": _strings(data["uid"]),
            "off_policy": [int(x) for x in torch.as_tensor(data[OFF_POLICY_FIELD]).reshape(-1).tolist()],
            "prompt_key": [self._step_state.prompt_key_of.get(k) for k in keys],
        }
        for name in tensors:
            rows[name] = [t.clone() for t in data[name].unbind()]
        os.makedirs(dump_dir, exist_ok=True)
        torch.save(rows, os.path.join(dump_dir, f"step_{self.global_steps}.pt"))

    # ------------------------------------------------------------------ 5. one optimizer step per mini-batch

    def _get_required_batch_multiple(self, dp_size: int) -> int:
        base = super()._get_required_batch_multiple(dp_size)
        state = self._step_state
        if state is None or not state.off_keys or self.config.trainer.critic_warmup > self.global_steps:
            return base
        # Replayed rows enlarge each mini-batch instead of adding mini-batches: the number of
        # optimizer steps per training step stays what the user configured (the paper replays into
        # the same optimizer step). Pad the batch to num_mb mini-batches of m rows, m a multiple of
        # every pass's dp x micro-batch size, each pass with its own worker group's dp (pass_layouts).
        num_mb, m = replay_batch_layout(
            len(state.on_keys),
            len(state.off_keys),
            rows_per_mini_batch=self._rows_per_mini_batch(),
            multiple=rows_multiple(self._pass_layouts()),
        )
        state.mini_batch_rows = m
        return m * num_mb

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        state, actor = self._step_state, self.config.actor_rollout_ref.actor
        if state is None:
            return self._update_actor_rows(batch, metrics)
        rows = state.mini_batch_rows or self._rows_per_mini_batch()
        # real rows per mini-batch: the loss's seq-mean normalisers (mini_batch_counts)
        write_mini_batch_counts(batch, dp_size=self._actor_dp_size(), mini_batch_rows=rows, shuffle=bool(actor.shuffle),
                                seed=int(actor.data_loader_seed), epochs=int(actor.ppo_epochs), off_keys=set(state.off_keys))
        with self._mini_batch_rows(rows):  # every path below, zero_adv_skip's fallback included, sees these mini-batches
            batch = self._update_actor_rows(batch, metrics)
        mean_metrics_from_sums(metrics, prefix="actor/")  # the loss's sums and counts -> means (loss.SUM_METRICS)
        return batch

    def _update_actor_rows(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        state = self._step_state
        if self.skip_zero_adv_rows:  # zero-advantage rows leave the update (zero_adv_skip)
            return update_actor_skipping(
                self, batch, metrics, dp_size=self._actor_dp_size(), update=super()._update_actor,
                rows_per_mini_batch=(state and state.mini_batch_rows) or self._rows_per_mini_batch(),
                micro_batch_size=self._micro_batch_sizes()["update"],
            )
        if state is None or state.mini_batch_rows is None:
            return super()._update_actor(batch, metrics)
        with self._mini_batch_rows(state.mini_batch_rows):
            return super()._update_actor(batch, metrics)

    @contextmanager
    def _mini_batch_rows(self, rows: int):
        """verl's _update_actor sizes mini-batches as ppo_mini_batch_size * rollout.n rows; for this
        call only, make that product equal ``rows``."""
        actor = self.config.actor_rollout_ref.actor
        rollout = self.config.actor_rollout_ref.rollout
        saved = (actor.ppo_mini_batch_size, rollout.n)
        with open_dict(self.config):
            actor.ppo_mini_batch_size, rollout.n = rows, 1
        try:
            yield
        finally:
            with open_dict(self.config):
                actor.ppo_mini_batch_size, rollout.n = saved

    # ------------------------------------------------------------------ 6. insert

    def _insert_on_policy_rows(self, batch: KVBatchMeta) -> None:
        state = self._step_state
        if not state.on_keys or self.repo_config.strategy == "none":
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
        order = canonical_insert_order(prompt_keys, responses, masks, seed=self.repo_config.seed)
        insert_on_policy_rows(
            self.replay_store,
            prompt_keys=[prompt_keys[i] for i in order],
            responses=[responses[i] for i in order],
            response_masks=[masks[i] for i in order],
            behaviour_log_probs=[logps[i] for i in order],
            token_scores=[scores[i] for i in order],
            step=self.global_steps,
            max_response_length=int(self.config.data.max_response_length),
            counters=self._bad_rows,
        )

    def _store_metrics(self) -> dict[str, float]:
        stats = self.replay_store.stats()
        out = {f"repo/store_{k}": float(v) for k, v in stats.items() if isinstance(v, (int, float))}
        out.update({f"repo/bad_rows_{k}": float(v) for k, v in self._bad_rows.items()})
        return out

    # ------------------------------------------------------------------ verl metrics: on-policy rows only

    def _compute_metrics(self, batch: KVBatchMeta, metrics, timing_raw, global_steps, epoch):
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
        # into global_step_N/actor/ before verl saves the actor (so verl prunes and copies it with the
        # actor) and before verl writes its tracker file last (see store_checkpoint)
        step_dir = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        save_store_state(
            self.replay_store, step_dir, self.global_steps,
            extra=counters_extra(self._total_injected, self._bad_rows, store_start_step=self._store_start_step),
        )
        return super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps <= 0:
            return
        step_dir = self._resumed_step_dir()
        decision = store_on_resume(
            has_store=has_store_state(step_dir),
            missing_store_on_resume=self.repo_config.missing_store_on_resume,
            strategy=self.repo_config.strategy,
        )
        if decision == "empty":
            self._start_with_empty_store(step_dir)
            return
        # "refuse" too: load_store_state raises FileNotFoundError naming the setting
        extra = load_store_state(self.replay_store, step_dir, expected_step=self.global_steps)
        self._total_injected, self._bad_rows = restore_counters(extra)  # run-long, not per process
        self._store_start_step = restore_store_start_step(extra)
        if self._store_start_step:  # a warm-started run resumed again: its gate still counts from there
            self._report_replay_outlook()
        dump_dir = os.environ.get(DUMP_DIR_ENV)
        if dump_dir:
            os.makedirs(dump_dir, exist_ok=True)
            torch.save(self.replay_store.state_dict(), os.path.join(dump_dir, f"restored_store_step_{self.global_steps}.pt"))
        logger.info(
            "RePO: restored replay store from %s (%d prompts, %d entries, %d bytes)",
            step_dir,
            self.replay_store.num_prompts,
            self.replay_store.num_entries,
            self.replay_store.nbytes,
        )

    def _start_with_empty_store(self, step_dir: str) -> None:
        """A resume from a checkpoint without a store (missing_store_on_resume=empty, or no replay):
        the actor, optimizer and data loader continue from it; the store starts empty now."""
        self._store_start_step = self.global_steps
        if self.repo_config.strategy != "none":
            logger.warning(
                "RePO: resumed from %s, which has no replay store (%s): a warm start with an EMPTY store, as "
                "%s=empty asks. Replay starts as in a fresh run, counted from step %d; repo/store_start_step "
                "logs %d.",
                step_dir, store_path(step_dir), STORE_ON_RESUME_SETTING, self.global_steps, self.global_steps,
            )
            self._report_replay_outlook()

    def _resumed_step_dir(self) -> str:
        trainer_cfg = self.config.trainer
        if trainer_cfg.resume_mode == "resume_path":
            path = str(trainer_cfg.resume_from_path)
        else:
            path = os.path.join(str(trainer_cfg.default_local_dir), f"global_step_{self.global_steps}")
        return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
