"""Start-up validation: every RePO setting and every combination that cannot work fails with a message
naming the setting, the value and what would work, on configs composed by Hydra as a launch does."""

from __future__ import annotations

import pytest
from launch_config import SMALL_REPO_LAUNCH, compose_verl

from repo_ext.integration.config_checks import RePOLaunchCheck, check_repo_wiring
from repo_ext.integration.estimators import repo_config_from_algorithm
from repo_ext.integration.trainer import validate_trainer_config

VALID = list(SMALL_REPO_LAUNCH)
_compose = compose_verl


def _validate(overrides, name="ppo_trainer"):
    cfg = _compose(overrides, name)
    validate_trainer_config(cfg, repo_config_from_algorithm(cfg.algorithm))


def _replace(overrides, **changes):
    """VALID with the settings in ``changes`` (dots written as __) replaced or added."""
    changes = {key.replace("__", "."): value for key, value in changes.items()}
    kept = [o for o in overrides if o.lstrip("+").split("=")[0] not in changes]
    return kept + [f"{key}={value}" for key, value in changes.items()]


def test_valid_launches_pass():
    _validate(VALID)
    _validate([], name="repo_trainer")  # the paper's settings
    _validate(_replace(VALID, **{"algorithm__repo__strategy": "none", "actor_rollout_ref__rollout__n": 1}))


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        # single values (RePOConfig), checked when the trainer reads algorithm.repo
        ({"algorithm__repo__strategy": "random"}, ["algorithm.repo.strategy='random'", "recent_k", "random_k"]),
        ({"algorithm__repo__num_replays": 5}, ["algorithm.repo.num_replays=5", "max_cache_size=4"]),
        ({"algorithm__repo__min_cache_to_replay": 6}, ["algorithm.repo.min_cache_to_replay=6", "[1, max_cache_size=4]"]),
        ({"algorithm__repo__max_store_bytes": -1}, ["algorithm.repo.max_store_bytes=-1", "null for no cap"]),
        ({"algorithm__repo__epsilon": 0}, ["algorithm.repo.epsilon=0", "> 0"]),
        ({"algorithm__repo__advantage_mode": "joint"}, ["algorithm.repo.advantage_mode='joint'", "split, mixed"]),
        ({"algorithm__repo__off_policy_loss_coef": -1}, ["algorithm.repo.off_policy_loss_coef=-1", ">= 0"]),
        ({"+algorithm__repo__num_replay": 4}, ["num_replay", "valid settings are", "num_replays"]),
        # combinations with verl's settings
        (
            {"data__train_batch_size": 6},
            ["actor_rollout_ref.actor.ppo_mini_batch_size=4", "data.train_batch_size=6", "[1, 2, 3, 6]"],
        ),
        ({"actor_rollout_ref__rollout__n": 1}, ["actor_rollout_ref.rollout.n=1", "n >= 2"]),
        (
            {"algorithm__repo__loss_weighting": "paper", "actor_rollout_ref__actor__loss_agg_mode": "token-mean"},
            ["algorithm.repo.loss_weighting=paper", "loss_agg_mode=token-mean", "seq-mean-token-mean"],
        ),
        (
            {"algorithm__repo__max_store_bytes": 100, "data__max_response_length": 1024},
            # 1024 x 8 bytes + a 1024-bit loss mask (a response with tool tokens): 8192 + 128
            ["algorithm.repo.max_store_bytes=100", "data.max_response_length=1024", ">= 8320"],
        ),
        ({"algorithm__adv_estimator": "grpo"}, ["algorithm.adv_estimator=repo_split", "Remove the override algorithm.adv_estimator=grpo"]),
        (
            {"actor_rollout_ref__actor__policy_loss__loss_mode": "vanilla"},
            ["actor_rollout_ref.actor.policy_loss.loss_mode=repo", "Remove the override actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"],
        ),
        ({"critic__enable": True}, ["Remove the override critic.enable=True", "critic.enable=False"]),
        ({"trainer__use_v1": False}, ["trainer.use_v1=False", "trainer.use_v1=True"]),
    ],
)
def test_invalid_launch_names_setting_value_and_fix(changes, fragments):
    with pytest.raises(ValueError) as info:
        _validate(_replace(VALID, **changes))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_paper_weighting_with_a_per_sequence_mode_is_fine():
    _validate(
        _replace(
            VALID, **{"algorithm__repo__loss_weighting": "paper", "actor_rollout_ref__actor__loss_agg_mode": "seq-mean-token-mean"}
        )
    )


def test_store_cap_is_ignored_without_replay():
    # strategy=none never stores anything, so a tiny cap cannot break it
    _validate(_replace(VALID, **{"algorithm__repo__strategy": "none", "algorithm__repo__max_store_bytes": 8}))


# ---------------------------------------------------------------- RePO parts without the RePO trainer


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            ["algorithm.adv_estimator=repo_split", "+algorithm.repo.strategy=recent_k"],
            ["algorithm.adv_estimator=repo_split", "trainer.v1.trainer_mode=sync", "trainer.v1.trainer_mode=repo_sync"],
        ),
        (
            ["algorithm=repo", "trainer.v1.trainer_mode=sync"],
            [
                "algorithm.adv_estimator=repo_split and actor_rollout_ref.actor.policy_loss.loss_mode=repo",
                "algorithm.repo.strategy=recent_k would never replay",
                "algorithm.repo.strategy=none",
            ],
        ),
        (
            ["actor_rollout_ref.actor.policy_loss.loss_mode=repo"],
            ["actor_rollout_ref.actor.policy_loss.loss_mode=repo with trainer.v1.trainer_mode=sync"],
        ),
    ],
)
def test_repo_parts_without_the_repo_trainer_fail_at_launch(overrides, fragments):
    cfg = _compose(overrides)
    with pytest.raises(ValueError) as info:
        RePOLaunchCheck().on_job_start(config=cfg)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ([], "ppo_trainer"),  # stock GRPO/PPO, no RePO at all
        (["algorithm=grpo"], "repo_trainer"),  # the GRPO baseline of the RePO config
        (["algorithm=repo", "trainer.v1.trainer_mode=sync", "algorithm.repo.strategy=none"], "ppo_trainer"),
        (VALID, "ppo_trainer"),
    ],
)
def test_launch_check_accepts_consistent_launches(overrides, name):
    cfg = _compose(overrides, name)
    RePOLaunchCheck().on_job_start(config=cfg)
    check_repo_wiring(cfg, repo_config_from_algorithm(cfg.algorithm))


def test_launch_check_runs_under_hydra_before_ray_starts(tmp_path):
    """Through verl's own entry point: the callback stops the launch in seconds, before ``ray.init``."""
    from repo_ext.cpu.tiny_run import run_main_ppo

    overrides = [
        "algorithm=repo", "trainer.v1.trainer_mode=sync",
        "++hydra.callbacks.repo_launch_check._target_=repo_ext.integration.config_checks.RePOLaunchCheck",
        f"hydra.run.dir={tmp_path}",
    ]
    result = run_main_ppo(overrides, timeout_s=180, log_path=tmp_path / "launch.log", check=False)
    log = result.log()
    assert result.returncode != 0, log[-3000:]
    assert "would never replay anything" in log, log[-3000:]
    assert "ray init kwargs" not in log and "Started a local Ray instance" not in log


def test_repo_split_without_the_repo_trainer_warns_once(monkeypatch, caplog):
    """The last line of defence, for launches that bypass Hydra (a config built in Python)."""
    import logging

    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from repo_ext.integration import estimators

    monkeypatch.setattr(estimators, "_repo_trainer_running", False)
    monkeypatch.setattr(estimators, "_warned_without_trainer", False)
    rewards, mask = torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.ones(2, 2)
    uids = np.array(["a", "a"], dtype=object)
    none = OmegaConf.create({"repo": {"strategy": "none"}})
    replay = OmegaConf.create({"repo": {"strategy": "highest_k"}})
    with caplog.at_level(logging.WARNING, logger=estimators.__name__):
        estimators.compute_repo_split_advantage(rewards, mask, config=none, index=uids)
        assert not caplog.records
        for _ in range(3):
            estimators.compute_repo_split_advantage(rewards, mask, config=replay, index=uids)
    [record] = caplog.records
    assert "without the RePO trainer" in record.getMessage() and "strategy=highest_k" in record.getMessage()
    estimators.mark_repo_trainer_running()  # what RePOTrainer.__init__ does
    monkeypatch.setattr(estimators, "_warned_without_trainer", False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=estimators.__name__):
        estimators.compute_repo_split_advantage(rewards, mask, config=replay, index=uids)
    assert not caplog.records
