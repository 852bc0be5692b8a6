"""Group advantages: hand-computed values, split vs mixed, and equality with verl's GRPO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repo_ext.algorithm.advantages import broadcast_to_tokens, group_advantages, nonzero_advantage_group_fraction

# prompt "a": 4 on-policy rows (rewards 1, 0, 0, 1) and 3 replayed rows (rewards 1, 1, 0)
SCORES = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
KEYS = ["a"] * 7
OFF = torch.tensor([False, False, False, False, True, True, True])


def test_split_by_hand():
    adv = group_advantages(SCORES, KEYS, OFF, mode="split", epsilon=1e-6)
    # on: mean 1/2, unbiased std sqrt(1/3) = 0.5773502691896258 -> +-0.5 / (0.57735... + 1e-6)
    # off: mean 2/3, unbiased std sqrt(1/3) -> (1/3) / 0.57735... and -(2/3) / 0.57735...
    expected = [0.8660239037870368, -0.8660239037870368, -0.8660239037870368, 0.8660239037870368,
                0.5773492691, 0.5773492691, -1.1546985383]
    assert adv.tolist() == pytest.approx(expected, abs=1e-9)


def test_split_with_epsilon_zero_and_one():
    adv0 = group_advantages(SCORES, KEYS, OFF, mode="split", epsilon=0.0)
    assert adv0.tolist() == pytest.approx(
        [0.8660254037844387, -0.8660254037844387, -0.8660254037844387, 0.8660254037844387,
         0.5773502691896257, 0.5773502691896257, -1.1547005383792515], abs=1e-12)
    adv1 = group_advantages(SCORES, KEYS, OFF, mode="split", epsilon=1.0)
    assert adv1[0].item() == pytest.approx(0.3169872981077807, abs=1e-12)  # 0.5 / (0.57735 + 1)


def test_mixed_by_hand():
    adv = group_advantages(SCORES, KEYS, OFF, mode="mixed", epsilon=1e-6)
    # all 7 rows: mean 4/7, unbiased variance (4 (3/7)^2 + 3 (4/7)^2) / 6 = 2/7
    up, down = 0.8017822257400793, -1.069042967653439  # (3/7) / (sqrt(2/7) + 1e-6), -(4/7) / (...)
    assert adv.tolist() == pytest.approx([up, down, down, up, up, up, down], abs=1e-9)


def test_without_std_scaling_by_hand():
    split = group_advantages(SCORES, KEYS, OFF, mode="split", norm_by_std=False)
    assert split.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 1 / 3, 1 / 3, -2 / 3], abs=1e-12)
    mixed = group_advantages(SCORES, KEYS, OFF, mode="mixed", norm_by_std=False)
    assert mixed.tolist() == pytest.approx([3 / 7, -4 / 7, -4 / 7, 3 / 7, 3 / 7, 3 / 7, -4 / 7], abs=1e-12)


def test_singletons_and_uniform_groups():
    scores = torch.tensor([0.7, 0.9, 1.0, 1.0, 0.3])
    keys = ["s", "t", "u", "u", "v"]
    off = torch.tensor([False, True, False, False, True])
    adv = group_advantages(scores, keys, off, mode="split", epsilon=1e-6)
    # s: on-policy singleton, verl's rule mean 0 std 1 -> 0.7 / (1 + 1e-6) = 0.6999993
    # t: off-policy singleton -> 0;  u: all equal -> 0;  v: off-policy singleton -> 0
    assert adv.tolist() == pytest.approx([0.6999993000007, 0.0, 0.0, 0.0, 0.0], abs=1e-6)
    no_std = group_advantages(scores, keys, off, mode="split", norm_by_std=False)
    assert no_std[0].item() == pytest.approx(0.7, abs=1e-7)


def test_split_groups_are_per_prompt():
    scores = torch.tensor([1.0, 0.0, 5.0, 5.0, 2.0, 0.0])
    keys = ["a", "a", "b", "b", "a", "a"]
    off = torch.tensor([False, False, False, False, True, True])
    adv = group_advantages(scores, keys, off, mode="split", norm_by_std=False)
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 1.0, -1.0])


def test_returns_a_copy_without_gradient():
    scores = torch.tensor([1.0, 0.0], requires_grad=True)
    adv = group_advantages(scores, ["a", "a"], torch.tensor([False, False]), mode="split")
    assert not adv.requires_grad and scores.tolist() == [1.0, 0.0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="split, mixed"):
        group_advantages(SCORES, KEYS, OFF, mode="joint")
    with pytest.raises(ValueError, match="off_policy"):
        group_advantages(SCORES, KEYS, OFF.float(), mode="split")
    with pytest.raises(ValueError, match="group_keys"):
        group_advantages(SCORES, KEYS[:3], OFF, mode="split")


def test_broadcast_to_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask)
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


def test_nonzero_advantage_group_fraction_by_hand():
    # prompt a: on (0, 0) zero, off (1, -1) non-zero; prompt b: on (1, -1), no off rows;
    # prompt c: on (0, 0), off (0, 0)
    adv = torch.tensor([0.0, 0.0, 1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    keys = ["a", "a", "a", "a", "b", "b", "c", "c", "c", "c"]
    off = torch.tensor([False, False, True, True, False, False, False, False, True, True])
    fractions = nonzero_advantage_group_fraction(adv, keys, off)
    assert fractions == pytest.approx({"on": 1 / 3, "off": 1 / 2, "all": 2 / 3})
    assert nonzero_advantage_group_fraction(adv[4:6], keys[4:6], off[4:6]) == {"on": 1.0, "off": 0.0, "all": 1.0}


# ---------------------------------------------------------------- equality with verl's GRPO


def _random_batch(seed: int, batch: int = 40, length: int = 6):
    gen = torch.Generator().manual_seed(seed)
    num_prompts = 9
    keys = [f"p{int(i)}" for i in torch.randint(0, num_prompts, (batch,), generator=gen)]
    keys[0], keys[1] = "solo-0", "solo-1"  # singleton groups: verl's mean 0 / std 1 rule
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    scores = torch.where(torch.rand(batch, generator=gen) < 0.5, 0.0, 1.0) + 0.1 * torch.randn(batch, generator=gen)
    token_rewards = torch.zeros(batch, length)
    token_rewards[torch.arange(batch), lengths - 1] = scores  # outcome reward on the last token
    off = torch.rand(batch, generator=gen) < 0.4
    return keys, mask, token_rewards, scores, off


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("mode", ["split", "mixed"])
def test_equals_verl_grpo_without_off_policy_rows(seed, norm, mode):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    keys, mask, token_rewards, _, _ = _random_batch(seed)
    expected, _ = compute_grpo_outcome_advantage(
        token_rewards, mask, np.array(keys, dtype=object), epsilon=1e-6, norm_adv_by_std_in_grpo=norm
    )
    no_off = torch.zeros(len(keys), dtype=torch.bool)
    ours = group_advantages(token_rewards.sum(-1), keys, no_off, mode=mode, norm_by_std=norm, epsilon=1e-6)
    assert torch.equal(broadcast_to_tokens(ours, mask), expected)


@pytest.mark.parametrize("seed", range(5))
def test_split_on_policy_rows_equal_verl_grpo_on_those_rows_alone(seed):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    keys, mask, token_rewards, _, off = _random_batch(seed)
    ours = group_advantages(token_rewards.sum(-1), keys, off, mode="split", epsilon=1e-6)
    on = (~off).nonzero().squeeze(-1)
    expected, _ = compute_grpo_outcome_advantage(
        token_rewards[on], mask[on], np.array([keys[i] for i in on.tolist()], dtype=object), epsilon=1e-6
    )
    assert torch.equal(broadcast_to_tokens(ours[on], mask[on]), expected)
