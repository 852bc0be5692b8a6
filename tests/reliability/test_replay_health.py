"""A replay that silently does nothing is reported, with its reason, once the gate should have opened."""

from __future__ import annotations

import logging
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
from omegaconf import OmegaConf

from repo_ext.algorithm.config import RePOConfig
from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.replay_health import replay_gate_step, replay_stall_reason
from repo_ext.integration.hooks.step_state import StepState as _StepState
from repo_ext.integration.trainer import RePOTrainer


def _stats(prompts=4, entries=8, replayable=0, byte_evictions=0, cap=1000, inserted=None):
    return {
        "num_prompts": prompts, "num_entries": entries, "num_replayable_prompts": replayable,
        "num_byte_evictions": byte_evictions, "max_store_bytes": cap,
        "num_inserted": entries + byte_evictions if inserted is None else inserted,
    }


def _reason(step, **kw):
    args = dict(
        strategy="recent_k", global_step=step, total_injected=0, min_cache_to_replay=16, rollout_n=8,
        steps_per_epoch=32, store_stats=_stats(), bad_rows={}, dataset_prompts=128,
    )
    args.update(kw)
    return replay_stall_reason(**args)


def test_gate_step_by_hand():
    # 16 entries need 2 visits of 8; one visit per epoch of 32 steps -> replay from step 65
    assert replay_gate_step(min_cache_to_replay=16, rollout_n=8, steps_per_epoch=32) == 65
    assert replay_gate_step(min_cache_to_replay=2, rollout_n=2, steps_per_epoch=1) == 2  # the tiny e2e run
    assert replay_gate_step(min_cache_to_replay=5, rollout_n=2, steps_per_epoch=10) == 31


def test_silent_until_the_gate_and_one_step_of_grace():
    assert _reason(65) is None
    assert _reason(66) is not None


def test_fine_when_something_was_injected_or_replay_is_off():
    assert _reason(500, total_injected=1) is None
    assert _reason(500, strategy="none") is None


def test_empty_store_names_the_rejected_rows():
    bad = {"no_loss_tokens": 512, "duplicate_prompt_groups": 3}
    reason = _reason(66, store_stats=_stats(prompts=0, entries=0), bad_rows=bad)
    assert "store is empty" in reason and "no_loss_tokens=512" in reason
    assert "duplicate_prompt_groups" not in reason  # duplicates are stored, not a rejection


def test_byte_cap_that_evicts_before_the_gate():
    reason = _reason(66, store_stats=_stats(byte_evictions=300, cap=4096))
    assert "algorithm.repo.max_store_bytes=4096 has evicted 300 entries" in reason


def test_byte_cap_that_evicts_before_prompts_come_back_although_some_pass_the_gate():
    # measured by benchmarks/bench_store_memory.py --prompts 20000 --max-cache 16 --min-cache 16 --steps 1000:
    # 512,000 inserted by step 1000, 65,601 held (= 128 steps' worth), an epoch is 312 steps
    reason = _reason(
        1000, steps_per_epoch=312, dataset_prompts=20000,
        store_stats=_stats(prompts=7389, entries=65601, replayable=812, byte_evictions=446399, inserted=512000),
    )
    assert "about the last 128 steps of responses" in reason  # 65601 * 1000 / 512000 = 128.1
    assert "once every 312 steps" in reason and "812 prompts pass the gate now" in reason


def test_prompt_keys_that_change_between_visits():
    reason = _reason(66, store_stats=_stats(prompts=1000, entries=8000))
    assert "1000 distinct prompt keys for 128" in reason


def test_gate_not_reached():
    reason = _reason(66, store_stats=_stats(prompts=128, entries=900), bad_rows={"nonfinite_reward": 124})
    assert "no prompt holds min_cache_to_replay=16" in reason and "nonfinite_reward=124" in reason


def test_replayable_prompts_that_never_come_back():
    assert "2 prompts pass the gate" in _reason(66, store_stats=_stats(replayable=2))


def _fake_trainer(store, step, total_injected=0):
    """The attributes RePOTrainer._check_replay_alive reads, and nothing else."""
    return SimpleNamespace(
        repo_config=RePOConfig(min_cache_to_replay=2, max_cache_size=4, num_replays=2),
        config=OmegaConf.create({"actor_rollout_ref": {"rollout": {"n": 2}}, "data": {"train_batch_size": 4}}),
        steps_per_epoch=1,
        train_dataset=[0, 1, 2, 3],
        global_steps=step,
        _total_injected=total_injected,
        replay_store=store,
        _bad_rows=defaultdict(int, {"nonfinite_reward": 8}),
        _step_state=_StepState(),
        _gate_warning_done=False,
        _store_start_step=0,
    )


def test_trainer_warns_once_and_logs_the_metric_every_step(caplog):
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    store.insert("p", np.array([1]), np.array([-0.5], np.float32), 1.0, 1)  # 1 entry: below the gate of 2
    trainer = _fake_trainer(store, step=2)
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.trainer"):
        RePOTrainer._check_replay_alive(trainer)  # step 2 is the gate step: not yet
        assert trainer._step_state.metrics["repo/replay_stalled"] == 0.0 and not caplog.records
        for step in (3, 4):
            trainer.global_steps, trainer._step_state = step, _StepState()
            RePOTrainer._check_replay_alive(trainer)
            assert trainer._step_state.metrics["repo/replay_stalled"] == 1.0
    [record] = caplog.records  # warned once, not every step
    assert record.levelno == logging.WARNING
    assert "no replayed row has been injected by step 3" in record.getMessage()
    assert "nonfinite_reward=8" in record.getMessage()


def test_trainer_is_quiet_when_replay_works(caplog):
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    trainer = _fake_trainer(store, step=10, total_injected=4)
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.trainer"):
        RePOTrainer._check_replay_alive(trainer)
    assert trainer._step_state.metrics["repo/replay_stalled"] == 0.0 and not caplog.records


def test_trainer_never_warns_without_replay(caplog):
    trainer = _fake_trainer(ReplayStore(max_cache_size=4, min_cache_to_replay=2), step=100)
    trainer.repo_config = RePOConfig(strategy="none")
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.trainer"):
        RePOTrainer._check_replay_alive(trainer)
    assert not caplog.records
