"""Reward for the tiny arithmetic smoke runs (``reward.custom_reward_function.path``).

1.0 when the text after the last ``####`` starts with the ground-truth number; otherwise the
fraction of the response's characters that are digits, times 0.5. The partial credit varies from
sample to sample even for a random model, so GRPO advantages (and the actor's gradient) are not
all zero in a two-step smoke run.
"""

from __future__ import annotations


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    if "####" in solution_str:
        answer = solution_str.rsplit("####", 1)[1].strip().split()
        if answer and answer[0] == str(ground_truth).strip():
            return 1.0
    if not solution_str:
        return 0.0
    return 0.5 * sum(ch.isdigit() for ch in solution_str) / len(solution_str)
