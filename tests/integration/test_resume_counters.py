"""The RePO trainer's run-long counters survive a resume: the replayed-row total (so no spurious
"replay stalled" warning after a resume) and the ``repo/bad_rows_*`` counters. Saved with the
store (``store_checkpoint``'s ``extra`` dict) by the trainer's own checkpoint methods; verl's part of
saving/loading is stubbed."""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import pytest
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from repo_ext.algorithm.config import RePOConfig
from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.replay_counters import counters_extra, restore_counters
from repo_ext.integration.hooks.step_state import StepState as _StepState
from repo_ext.integration.trainer import RePOTrainer

STEP = 3


def _trainer(tmp_path, total_injected=0, bad_rows=None):
    trainer = object.__new__(RePOTrainer)
    trainer.config = OmegaConf.create(
        {
            "trainer": {"default_local_dir": str(tmp_path), "resume_mode": "auto"},
            "actor_rollout_ref": {"rollout": {"n": 2}},
        }
    )
    trainer.repo_config = RePOConfig(min_cache_to_replay=2, max_cache_size=4, num_replays=2)
    trainer.replay_store = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    trainer.global_steps, trainer.steps_per_epoch, trainer.train_dataset = STEP, 1, [0, 1]
    trainer._total_injected = total_injected
    trainer._bad_rows = defaultdict(int, bad_rows or {})
    trainer._step_state, trainer._gate_warning_done = _StepState(), False
    return trainer


def test_counters_round_trip_through_the_store_checkpoint(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(PPOTrainerSync, "_save_checkpoint", lambda self: None, raising=False)
    monkeypatch.setattr(PPOTrainerSync, "_load_checkpoint", lambda self: None, raising=False)
    saved = _trainer(tmp_path, total_injected=6, bad_rows={"empty_response": 2, "nonfinite_reward": 1})
    saved.replay_store.insert("p", np.array([1, 2], np.int32), np.array([-0.5, -0.25], np.float32), 1.0, STEP)
    saved._save_checkpoint()

    resumed = _trainer(tmp_path)
    resumed._load_checkpoint()
    assert resumed._total_injected == 6
    assert dict(resumed._bad_rows) == {"empty_response": 2, "nonfinite_reward": 1}
    assert resumed.replay_store.num_entries == 1
    metrics = resumed._store_metrics()
    assert metrics["repo/bad_rows_empty_response"] == 2.0 and metrics["repo/bad_rows_nonfinite_reward"] == 1.0
    resumed._bad_rows["empty_response"] += 1  # still counts on as a defaultdict
    assert resumed._bad_rows["empty_response"] == 3 and resumed._bad_rows["no_loss_tokens"] == 0

    # past the gate (step 2 here) with 1 entry below min_cache_to_replay: before, the total restarted
    # at 0 and this warned "replay stalled" although 6 rows had been replayed in this run
    resumed.global_steps = 10
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.trainer"):
        resumed._check_replay_alive()
    assert resumed._step_state.metrics["repo/replay_stalled"] == 0.0 and not caplog.records


def test_a_checkpoint_without_counters_restarts_them():
    total, bad_rows = restore_counters({})
    assert total == 0 and dict(bad_rows) == {} and bad_rows["anything"] == 0


def test_counters_extra_is_plain_json():
    extra = counters_extra(np.int64(4), defaultdict(int, {"empty_response": np.int64(1)}))
    assert extra == {"repo_trainer_counters": {"total_injected": 4, "bad_rows": {"empty_response": 1}, "store_start_step": 0}}
    assert type(extra["repo_trainer_counters"]["total_injected"]) is int
    with pytest.raises(ValueError):
        counters_extra("x", {})
