"""A run too short for replay to start is announced at start-up, with the step and the settings to change.

Every expected step below is worked out by hand from the rule: a prompt is visited once per epoch,
gets n entries per visit, holds min_cache_to_replay entries after k = ceil(min / n) visits and is
replayed at visit k + 1, the earliest being the first step of epoch k + 1: k * steps_per_epoch + 1.
"""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from repo_ext.algorithm.config import RePOConfig
from repo_ext.integration.replay_health import fewest_steps_to_replay, replay_outlook, replay_stall_reason
from repo_ext.integration.trainer import RePOTrainer


def _outlook(**changes):
    args = dict(
        strategy="recent_k", dataset_prompts=100, train_batch_size=10, drop_last=True, total_epochs=4,
        total_training_steps=None, rollout_n=5, min_cache_to_replay=16, max_cache_size=16, max_store_bytes=None,
        max_response_length=1024, bytes_per_token=8,
    )
    args.update(changes)
    return replay_outlook(**args)


def test_the_issue_example_100_prompts_batch_10_n5_min16():
    # 10 steps per epoch; 16 entries need 4 visits of 5; replay at the 5th visit: step 4 * 10 + 1
    outlook = _outlook()
    assert (outlook.steps_per_epoch, outlook.visits_to_fill, outlook.first_replay_step) == (10, 4, 41)
    assert outlook.run_steps == 40  # 4 epochs x 10 steps: one step short
    warning = outlook.warning()
    assert warning is not None
    for fragment in (
        "replay can first happen at step 41", "the run ends at step 40", "plain GRPO at RePO's cost",
        "trainer.total_epochs >= 5",
        # 3 whole epochs before step 40: 3 visits of 5 hold 15 entries; or 3 visits of 6 hold 16
        "algorithm.repo.min_cache_to_replay to <= 15", "actor_rollout_ref.rollout.n to >= 6",
        "algorithm.repo.strategy=none",
    ):
        assert fragment in warning, (fragment, warning)
    assert "step 41 of 40" in outlook.summary()


def test_suggested_settings_do_replay_within_the_run():
    # the remedies of the example, each recomputed: replay then starts at step 3 * 10 + 1 = 31 <= 40
    assert _outlook(min_cache_to_replay=15).first_replay_step == 31
    assert _outlook(rollout_n=6).first_replay_step == 31
    assert _outlook(total_epochs=5).warning() is None
    assert _outlook(total_epochs=5).run_steps == 50


def test_total_training_steps_ends_the_run_first():
    outlook = _outlook(total_epochs=10, total_training_steps=30)
    assert outlook.run_steps == 30
    warning = outlook.warning()
    assert "the run ends at step 30" in warning and "trainer.total_training_steps >= 41" in warning
    # (30 - 1) // 10 = 2 whole epochs before the last step: 2 visits of 5 hold 10; 2 visits of 8 hold 16
    assert "min_cache_to_replay to <= 10" in warning and "rollout.n to >= 8" in warning
    # verl stops after total_epochs even when total_training_steps is larger
    assert _outlook(total_epochs=3, total_training_steps=1000).run_steps == 30


def test_drop_last_and_a_partial_last_batch():
    # 105 prompts, batch 10: verl drops the last 5 each epoch (10 steps); without drop_last 11 steps
    assert _outlook(dataset_prompts=105).first_replay_step == 4 * 10 + 1
    assert _outlook(dataset_prompts=105, drop_last=False).first_replay_step == 4 * 11 + 1


def test_n_at_least_min_cache_replays_in_the_second_epoch():
    assert _outlook(rollout_n=8, min_cache_to_replay=4, max_cache_size=4).first_replay_step == 10 + 1
    # the tiny CPU runs: 4 prompts, batch 4, n=2, min 2 -> step 2
    assert _outlook(dataset_prompts=4, train_batch_size=4, rollout_n=2, min_cache_to_replay=2,
                    max_cache_size=4).first_replay_step == 2


def test_a_cache_smaller_than_the_gate_never_replays():
    outlook = _outlook(max_cache_size=8, total_epochs=100)
    assert outlook.first_replay_step is None
    assert "max_cache_size=8 < algorithm.repo.min_cache_to_replay=16" in outlook.warning()


def test_byte_cap_that_would_evict_entries_before_their_prompt_comes_back():
    # 4 epochs x 10 steps x 10 prompts x 5 responses = 2000 responses to keep; 1,600,000 bytes at 8
    # bytes per token hold them while they average 1,600,000 / (8 * 2000) = 100 tokens
    outlook = _outlook(total_epochs=10, max_store_bytes=1_600_000)
    assert outlook.responses_to_keep == 2000 and outlook.byte_cap_mean_tokens == pytest.approx(100.0)
    warning = outlook.warning()
    assert "about 2000 responses" in warning and "average at most 100 tokens" in warning
    assert "algorithm.repo.max_store_bytes=1600000" in warning
    assert _outlook(total_epochs=10, max_store_bytes=1_600_000, max_response_length=100).warning() is None
    assert "even at one token each" in _outlook(total_epochs=10, max_store_bytes=8000).warning()


def test_a_warm_start_counts_from_the_resumed_step():
    # the store starts empty after step 50: 50 + 41 = 91
    outlook = _outlook(total_epochs=10, store_start_step=50)
    assert outlook.first_replay_step == 91 and outlook.warning() is None
    short = _outlook(total_epochs=9, store_start_step=50)
    assert short.first_replay_step == 91 and "the run ends at step 90" in short.warning()
    # the stall diagnosis moves its gate the same way (its one step of grace included)
    stats = {"num_prompts": 100, "num_entries": 1000, "num_replayable_prompts": 0, "num_byte_evictions": 0,
             "max_store_bytes": None, "num_inserted": 1000}
    common = dict(strategy="recent_k", total_injected=0, min_cache_to_replay=16, rollout_n=5, steps_per_epoch=10,
                  store_stats=stats, bad_rows={})
    assert replay_stall_reason(global_step=91, store_start_step=50, **common) is None
    assert replay_stall_reason(global_step=92, store_start_step=50, **common) is not None
    assert replay_stall_reason(global_step=42, **common) is not None


def test_no_replay_no_warning():
    outlook = _outlook(strategy="none")
    assert outlook.warning() is None and "no replay" in outlook.summary()


def test_fewest_steps_whatever_the_data():
    assert fewest_steps_to_replay(min_cache_to_replay=16, rollout_n=5) == 5
    assert fewest_steps_to_replay(min_cache_to_replay=16, rollout_n=16) == 2


class _Loader:
    drop_last = True


def test_the_trainer_reports_it_when_verl_has_loaded_the_data(monkeypatch, capsys, caplog):
    """RePOTrainer._init_dataloader (verl's own stubbed): the step is printed, the short run warned."""
    trainer = object.__new__(RePOTrainer)
    trainer.config = OmegaConf.create({
        "data": {"train_batch_size": 10, "max_response_length": 64},
        "trainer": {"total_epochs": 4, "total_training_steps": None},
        "actor_rollout_ref": {"rollout": {"n": 5}},
    })
    trainer.repo_config = RePOConfig()  # min_cache_to_replay 16, max_cache_size 16, 4 GiB cap

    def fake_init_dataloader(self):
        self.train_dataset, self.train_dataloader = list(range(100)), _Loader()

    monkeypatch.setattr(PPOTrainer, "_init_dataloader", fake_init_dataloader)
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.trainer"):
        trainer._init_dataloader()
    assert "RePO: replay can first happen at step 41 of 40" in capsys.readouterr().out
    assert len(caplog.records) == 1 and "the run ends at step 40" in caplog.records[0].getMessage()

    caplog.clear()
    trainer.config.trainer.total_epochs = 5
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.trainer"):
        trainer._init_dataloader()
    assert "step 41 of 50" in capsys.readouterr().out and not caplog.records


def test_the_launch_check_warns_when_total_training_steps_is_below_any_data_size(caplog):
    """Before the dataset is loaded only the bound ceil(min/n) + 1 is known: 16 at n=5 needs 5 steps."""
    from launch_config import compose_verl

    from repo_ext.integration.config_checks import RePOLaunchCheck

    launch = ["algorithm=repo", "data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
              "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", "actor_rollout_ref.rollout.n=5"]
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.config_checks"):
        RePOLaunchCheck().on_job_start(config=compose_verl(launch + ["trainer.total_training_steps=4"]))
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "trainer.total_training_steps=4 ends the run before any replay" in message and "at step 5" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.config_checks"):
        RePOLaunchCheck().on_job_start(config=compose_verl(launch + ["trainer.total_training_steps=5"]))
    assert not caplog.records
