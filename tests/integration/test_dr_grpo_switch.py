"""Issue #23 finding 3: verl's ``algorithm.norm_adv_by_std_in_grpo`` is the one switch of GRPO's std
normalisation, for verl's ``grpo`` and RePO's ``repo_split`` alike.

``python -m verl.trainer.main_ppo algorithm=repo algorithm.norm_adv_by_std_in_grpo=false`` used to
give std-normalised advantages (``repo_split`` read its own ``algorithm.repo.norm_adv_by_std``):
[1.5, -0.5, -0.5, -0.5] where Dr. GRPO gives [0.75, -0.25, -0.25, -0.25]. Here the config is
composed by Hydra as that launch composes it, and its ``algorithm`` section goes into the
registered estimator through verl's own advantage function, with the arguments verl's V1 trainer
passes (verl/trainer/ppo/v1/trainer_base.py ``_compute_advantage``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from launch_config import compose_verl
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

from repo_ext.integration.config_checks import RePOLaunchCheck
from repo_ext.integration.estimators import repo_config_from_algorithm
from repo_ext.integration.replay_rows import OFF_POLICY_UID_SUFFIX

LAUNCH = ["algorithm=repo"]
# prompt "p": 4 on-policy samples with rewards 1, 0, 0, 0; 3 replayed samples with rewards 1, 1, 0
ON_REWARDS, OFF_REWARDS = [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0]
# Dr. GRPO, by hand: r - mean. On: mean 1/4; replayed: mean 2/3
DR_GRPO = [0.75, -0.25, -0.25, -0.25, 1 / 3, 1 / 3, -2 / 3]
# GRPO, by hand: (r - mean) / (std + 1e-6), unbiased std. On: sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5;
# replayed: sqrt((2 * (1/3)^2 + (2/3)^2) / 2) = sqrt(1/3)
ON_STD, OFF_STD = 0.5, (1 / 3) ** 0.5
GRPO = [a / (ON_STD + 1e-6) for a in DR_GRPO[:4]] + [a / (OFF_STD + 1e-6) for a in DR_GRPO[4:]]


def _advantages(algorithm) -> torch.Tensor:
    """(7,) row advantages of prompt "p" as verl's V1 trainer computes them with this ``algorithm``."""
    scores = ON_REWARDS + OFF_REWARDS
    length = 3
    rewards = torch.zeros(len(scores), length)
    rewards[:, -1] = torch.tensor(scores)
    uids = ["p"] * len(ON_REWARDS) + ["p" + OFF_POLICY_UID_SUFFIX] * len(OFF_REWARDS)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": torch.ones(len(scores), length)},
        non_tensors={"uid": np.array(uids, dtype=object)},
    )
    keys = [f"p_{i}_0" for i in range(len(scores))]
    data = compute_advantage_for_multi_trajectories(
        data,
        batch_keys=keys,
        adv_estimator=algorithm.adv_estimator,
        gamma=algorithm.gamma,
        lam=algorithm.lam,
        num_repeat=len(ON_REWARDS),
        norm_adv_by_std_in_grpo=algorithm.get("norm_adv_by_std_in_grpo", True),
        config=algorithm,
    )
    advantages = data.batch["advantages"]
    assert torch.equal(advantages, advantages[:, :1].expand_as(advantages))  # one value per row
    return advantages[:, 0]


def test_norm_adv_by_std_in_grpo_false_gives_dr_grpo_advantages():
    algorithm = compose_verl(LAUNCH + ["algorithm.norm_adv_by_std_in_grpo=false"]).algorithm
    assert algorithm.adv_estimator == "repo_split"
    torch.testing.assert_close(_advantages(algorithm), torch.tensor(DR_GRPO), rtol=0, atol=1e-6)


def test_default_is_grpo_std_normalised():
    algorithm = compose_verl(LAUNCH).algorithm
    assert algorithm.norm_adv_by_std_in_grpo is True  # verl's default
    torch.testing.assert_close(_advantages(algorithm), torch.tensor(GRPO), rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", [True, False])
def test_on_policy_group_matches_verls_grpo_with_the_same_config(norm):
    """The same composed config through verl's own ``grpo`` (an implementation independent of ours):
    the on-policy group's advantages agree to float32 precision."""
    algorithm = compose_verl(LAUNCH + [f"algorithm.norm_adv_by_std_in_grpo={str(norm).lower()}"]).algorithm
    rewards = torch.zeros(len(ON_REWARDS), 3)
    rewards[:, -1] = torch.tensor(ON_REWARDS)
    theirs, _ = compute_grpo_outcome_advantage(
        rewards, torch.ones_like(rewards), np.array(["p"] * len(ON_REWARDS), dtype=object),
        norm_adv_by_std_in_grpo=algorithm.norm_adv_by_std_in_grpo,
    )
    torch.testing.assert_close(_advantages(algorithm)[: len(ON_REWARDS)], theirs[:, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("value", ["true", "false"])
def test_the_former_repo_switch_is_refused_before_ray_and_at_trainer_start(value):
    """``+algorithm.repo.norm_adv_by_std`` (the former RePO switch, which verl's never reached) is
    refused by the launch check (before Ray) and by the trainer's first step of start-up (its config
    is read with ``repo_config_from_algorithm``), naming verl's switch. Without ``+`` Hydra itself
    refuses the override: the key is not in RePO's config any more."""
    cfg = compose_verl(LAUNCH + [f"+algorithm.repo.norm_adv_by_std={value}"])
    for check in (lambda: RePOLaunchCheck().on_job_start(config=cfg), lambda: repo_config_from_algorithm(cfg.algorithm)):
        with pytest.raises(ValueError, match=r"algorithm\.repo\.norm_adv_by_std=.* is no longer a setting") as info:
            check()
        assert "algorithm.norm_adv_by_std_in_grpo" in str(info.value)
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="norm_adv_by_std"):
        compose_verl(LAUNCH + [f"algorithm.repo.norm_adv_by_std={value}"])
