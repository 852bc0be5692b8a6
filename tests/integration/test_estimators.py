"""repo_split and repo as verl calls them (registries, argument lists), against independent values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from repo_ext.integration.estimators import RePOLossFunction, compute_repo_split_advantage
from repo_ext.integration.replay_rows import OFF_POLICY_UID_SUFFIX


def _algo(**repo):
    base = {"strategy": "recent_k", "advantage_mode": "split", "epsilon": 1e-6}
    base.update(repo)
    return OmegaConf.create({"adv_estimator": "repo_split", "repo": base})


def _rewards(scores, length=3):
    r = torch.zeros(len(scores), length)
    r[:, -1] = torch.tensor(scores, dtype=torch.float32)
    return r, torch.ones(len(scores), length)


def test_registered_after_import_verl_in_fresh_process():
    import subprocess
    import sys

    code = (
        "import verl\n"
        "from verl.trainer.ppo import core_algos\n"
        "assert 'repo_split' in core_algos.ADV_ESTIMATOR_REGISTRY\n"
        "assert 'repo' in core_algos.POLICY_LOSS_REGISTRY\n"
        "from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY\n"
        "assert 'repo_sync' in TRAINER_REGISTRY\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_split_groups_replayed_rows_apart_by_uid_suffix():
    # prompt "a": on-policy rewards [1, 0], replayed rewards [1, 1, 0]
    scores = [1.0, 0.0, 1.0, 1.0, 0.0]
    uids = np.array(["a", "a"] + ["a" + OFF_POLICY_UID_SUFFIX] * 3, dtype=object)
    rewards, mask = _rewards(scores)
    adv, ret = compute_repo_split_advantage(rewards, mask, config=_algo(), index=uids)
    # on group: mean 0.5, unbiased std sqrt(0.5)
    s_on = math.sqrt(0.5)
    # off group: mean 2/3, unbiased std sqrt(((1/3)^2*2 + (2/3)^2)/2) = sqrt(1/3)
    s_off = math.sqrt(1 / 3)
    expected = [0.5 / (s_on + 1e-6), -0.5 / (s_on + 1e-6), (1 / 3) / (s_off + 1e-6), (1 / 3) / (s_off + 1e-6), (-2 / 3) / (s_off + 1e-6)]
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert torch.equal(adv, ret)


def test_mixed_normalises_all_rows_of_a_prompt_together():
    scores = [1.0, 0.0, 1.0, 1.0]
    uids = np.array(["a", "a", "a" + OFF_POLICY_UID_SUFFIX, "a" + OFF_POLICY_UID_SUFFIX], dtype=object)
    rewards, mask = _rewards(scores)
    adv, _ = compute_repo_split_advantage(rewards, mask, config=_algo(advantage_mode="mixed"), index=uids)
    mean, std = 0.75, math.sqrt((3 * 0.25**2 + 0.75**2) / 3)
    expected = [(s - mean) / (std + 1e-6) for s in scores]
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_without_replay_equals_verl_grpo():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    gen = torch.Generator().manual_seed(0)
    rewards = torch.zeros(12, 5)
    rewards[:, -1] = torch.randint(0, 2, (12,), generator=gen).float()
    mask = torch.ones(12, 5)
    mask[3, 3:] = 0
    uids = np.array([f"p{i // 4}" for i in range(12)], dtype=object)
    ours, _ = compute_repo_split_advantage(rewards, mask, config=_algo(), index=uids)
    theirs, _ = compute_grpo_outcome_advantage(rewards, mask, uids, epsilon=1e-6, norm_adv_by_std_in_grpo=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_repo_loss_via_set_loss_fn_wrapper_uses_flags():
    """The wrapper publishes the micro-batch's flags to the registered ``repo`` loss."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    from repo_ext.algorithm.config import RePOConfig
    from repo_ext.integration import estimators

    class Cfg(dict):
        clip_ratio = 0.2
        clip_ratio_low = 0.2
        clip_ratio_high = 0.2
        global_batch_info: dict = {}

    loss_fn = get_policy_loss_fn("repo")
    old = torch.zeros(2, 2)
    new = torch.log(torch.tensor([[1.5, 1.5], [1.5, 1.5]]))  # ratio 1.5 everywhere
    adv = torch.ones(2, 2)
    mask = torch.ones(2, 2)
    flags = estimators._RowFlags(torch.tensor([False, True]), None, None, "reference", 0.5)
    token = estimators._CURRENT_ROWS.set(flags)
    try:
        loss, metrics = loss_fn(old, new, adv, mask, "seq-mean-token-mean", Cfg())
    finally:
        estimators._CURRENT_ROWS.reset(token)
    # both rows clipped at 1.2: row losses -1.2 and 0.5 * -1.2; one mean over 2 rows
    assert loss.item() == pytest.approx((-1.2 - 0.6) / 2)
    from repo_ext.algorithm.loss import mean_metrics_from_sums

    assert mean_metrics_from_sums(metrics)["repo/off_clipfrac"] == pytest.approx(1.0)
    assert isinstance(RePOLossFunction(None, RePOConfig()), RePOLossFunction)
