"""Reward for the fault-injection runs: the tiny arithmetic reward, except a failing reward function
(NaN) for prompts whose ground truth is :data:`NAN_GROUND_TRUTH`."""

from __future__ import annotations

from repo_ext.cpu.tiny_reward import compute_score as tiny_score

NAN_GROUND_TRUTH = "reward-function-fails"


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    if ground_truth == NAN_GROUND_TRUTH:
        return float("nan")
    return tiny_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
