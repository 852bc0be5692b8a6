"""The demo's training command composes with Hydra into the intended RePO run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import verl
from hydra import compose, initialize_config_dir

from repo_ext.demo import PRESETS, build_parser, settings_from_args, training_overrides

VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


def test_default_overrides_compose():
    s = settings_from_args(build_parser().parse_args([]))
    overrides = training_overrides(s, Path("/m"), Path("/t.parquet"), Path("/v.parquet"), Path("/out"), 80)
    assert overrides[0] == "--config-name=repo_trainer"
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        cfg = compose(config_name="repo_trainer", overrides=overrides[1:])
    p = PRESETS["default"]
    assert cfg.algorithm.adv_estimator == "repo_split" and cfg.trainer.v1.trainer_mode == "repo_sync"
    assert cfg.algorithm.repo.strategy == "highest_k"
    assert cfg.algorithm.repo.num_replays == p["samples"] == cfg.actor_rollout_ref.rollout.n
    assert cfg.algorithm.repo.min_cache_to_replay == p["samples"]  # replay from a prompt's 2nd visit
    assert cfg.data.train_batch_size == p["prompts_per_step"]
    assert cfg.data.max_prompt_length == 80  # the demo's measured prompt length, not verl's default
    assert cfg.trainer.total_training_steps == p["steps"] and cfg.trainer.save_freq == p["steps"]
    assert cfg.actor_rollout_ref.rollout.name == "hf_cpu"  # from +preset=cpu
    assert cfg.reward.custom_reward_function.path == "pkg://repo_ext.data.reward"
    # the rollout's log-probs serve as old log-probs (no recomputation pass); they come with every response
    assert cfg.algorithm.rollout_correction.bypass_mode is True
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is True
    # ...equal to the actor's full-vocabulary log-probs only without top-k (repo_trainer.yaml has the paper's 50)
    assert cfg.actor_rollout_ref.rollout.top_k == -1 and cfg.actor_rollout_ref.rollout.top_p == 1.0
    assert cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 2
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "repo"  # bypass does not swap RePO's loss (V1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps=0"),
        (["--samples", "1"], "at least 2 samples"),
        (["--train-prompts", "10", "--prompts-per-step", "4"], "multiple of --prompts-per-step=4"),
    ],
)
def test_bad_arguments_are_refused(argv, message):
    with pytest.raises(SystemExit, match=message):
        settings_from_args(build_parser().parse_args(argv))
