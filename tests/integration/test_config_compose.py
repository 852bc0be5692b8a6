"""The launch forms compose with Hydra, on verl's stock config, without copying it."""

from __future__ import annotations

import os

import pytest
import verl
from hydra import compose, initialize_config_dir

VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return compose(config_name=name, overrides=overrides)


def test_plus_algorithm_repo_on_stock_config():
    cfg = _compose("ppo_trainer", ["+algorithm=repo", "algorithm.repo.strategy=highest_k"])
    assert cfg.algorithm.adv_estimator == "repo_split"
    assert cfg.algorithm.repo.strategy == "highest_k"
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "repo"
    assert cfg.trainer.v1.trainer_mode == "repo_sync"
    # verl's own algorithm sub-config is untouched
    assert "rollout_correction" in cfg.algorithm
    assert cfg.data.train_batch_size == 1024  # stock value, not ours


def test_literal_algorithm_repo_with_repo_trainer():
    cfg = _compose("repo_trainer", ["algorithm=repo"])
    assert cfg.algorithm.adv_estimator == "repo_split"
    assert cfg.trainer.v1.trainer_mode == "repo_sync"


def test_repo_trainer_holds_paper_defaults():
    # values from the paper's reference scripts (shared/docs/repo-algorithm.md), written out here
    cfg = _compose("repo_trainer", [])
    repo = cfg.algorithm.repo
    assert (repo.strategy, repo.num_replays, repo.min_cache_to_replay, repo.max_cache_size) == ("recent_k", 8, 16, 16)
    assert repo.advantage_mode == "split" and repo.off_policy_loss_coef == 1.0 and repo.epsilon == 1e-4
    actor = cfg.actor_rollout_ref.actor
    assert actor.optim.lr == 1e-6 and actor.optim.lr_scheduler_type == "cosine"
    assert actor.optim.lr_warmup_steps_ratio == 0.1 and actor.grad_clip == 1.0
    assert actor.clip_ratio_low == 0.2 and actor.clip_ratio_high == 0.2 and actor.use_kl_loss is False
    assert cfg.data.train_batch_size == 4 and actor.ppo_mini_batch_size == 4 and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.data.max_prompt_length == 512 and cfg.data.max_response_length == 1024
    rollout = cfg.actor_rollout_ref.rollout
    assert (rollout.temperature, rollout.top_k, rollout.top_p) == (1.0, 50, 1.0)
    assert cfg.trainer.total_epochs == 3


def test_grpo_baseline_shares_the_settings():
    repo = _compose("repo_trainer", [])
    grpo = _compose("repo_trainer", ["algorithm=grpo"])
    assert grpo.algorithm.adv_estimator == "grpo"
    assert grpo.actor_rollout_ref.actor.policy_loss.loss_mode == "vanilla"
    assert grpo.trainer.v1.trainer_mode == "sync"
    assert grpo.data == repo.data
    assert grpo.actor_rollout_ref.rollout.n == repo.actor_rollout_ref.rollout.n


def test_literal_algorithm_repo_is_refused_by_stock_config():
    # documents why the README says +algorithm=repo for verl's stock config
    with pytest.raises(Exception, match="algorithm"):
        _compose("ppo_trainer", ["algorithm=repo"])
