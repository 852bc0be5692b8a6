"""A replayed response becomes a complete verl row: prompt fields copied, response fields replaced."""

from __future__ import annotations

import numpy as np
import torch

from repo_ext.algorithm.store import ReplayEntry
from repo_ext.integration.replay_rows import OFF_POLICY_FIELD, OFF_POLICY_UID_SUFFIX, build_replay_row, prompt_key, split_uid


def _template():
    prompts = torch.tensor([5, 6, 7])
    responses = torch.tensor([8, 9])
    return {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses]),
        "attention_mask": torch.ones(5, dtype=torch.int64),
        "position_ids": torch.arange(5),
        "response_mask": torch.ones(2, dtype=torch.int64),
        "loss_mask": torch.ones(2, dtype=torch.int64),
        "rm_scores": torch.tensor([0.0, 1.0]),
        "uid": "u1",
        "session_id": 0,
        "data_source": "arith",
        "reward_model": {"ground_truth": "4"},
        OFF_POLICY_FIELD: torch.tensor(0),
    }


def test_build_replay_row():
    entry = ReplayEntry(
        response_ids=np.array([11, 12, 13, 14], dtype=np.int32),
        behaviour_log_probs=np.array([-0.5, -1.0, -0.25, -2.0], dtype=np.float32),
        reward=0.0,
        step=3,
    )
    template = _template()
    row = build_replay_row(template, entry, session_id=7)
    assert row["responses"].tolist() == [11, 12, 13, 14]
    assert row["input_ids"].tolist() == [5, 6, 7, 11, 12, 13, 14]
    assert row["position_ids"].tolist() == list(range(7))
    assert row["attention_mask"].tolist() == [1] * 7
    assert row["response_mask"].tolist() == [1, 1, 1, 1]
    assert row["rm_scores"].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert row["rollout_log_probs"].numpy().tobytes() == entry.behaviour_log_probs.tobytes()
    assert row["uid"] == "u1" + OFF_POLICY_UID_SUFFIX and split_uid(row["uid"]) == ("u1", True)
    assert row["session_id"] == 7 and int(row[OFF_POLICY_FIELD]) == 1
    assert row["data_source"] == "arith" and row["reward_model"] == {"ground_truth": "4"}
    # the template is not modified
    assert template["uid"] == "u1" and template["responses"].tolist() == [8, 9]


def test_reward_on_last_token():
    entry = ReplayEntry(np.array([1, 2], dtype=np.int32), np.zeros(2, dtype=np.float32), 1.0, 1)
    assert build_replay_row(_template(), entry, 1)["rm_scores"].tolist() == [0.0, 1.0]


def test_prompt_key_depends_only_on_token_ids():
    assert prompt_key(torch.tensor([1, 2, 3])) == prompt_key(np.array([1, 2, 3], dtype=np.int32))
    assert prompt_key(torch.tensor([1, 2, 3])) != prompt_key(torch.tensor([1, 2, 4]))
    assert split_uid("abc") == ("abc", False)


def test_canonical_insert_order_sorts_each_prompts_rows_by_response_tokens():
    import torch

    from repo_ext.integration.replay_rows import canonical_insert_order

    t = lambda *ids: torch.tensor(ids)  # noqa: E731
    keys = ["p", "q", "p", "p", "q"]
    responses = [t(5, 6, 0), t(9, 0, 0), t(3, 9, 9), t(5, 4, 0), t(1, 1, 0)]
    masks = [t(1, 1, 0), t(1, 0, 0), t(1, 1, 1), t(1, 1, 0), t(1, 1, 0)]
    # p's rows 0, 2, 3 hold (5, 6), (3, 9, 9), (5, 4): token order (3, 9, 9) < (5, 4) < (5, 6) -> 2, 3, 0
    # q's rows 1, 4 hold (9,), (1, 1): -> 4, 1; each prompt keeps its slots (p at 0, 2, 3; q at 1, 4)
    assert canonical_insert_order(keys, responses, masks) == [2, 4, 3, 0, 1]
    # the same responses handed to the rows in another order give the same stored sequence
    perm = [3, 4, 0, 2, 1]
    order = canonical_insert_order([keys[i] for i in perm], [responses[i] for i in perm], [masks[i] for i in perm])
    stored = [(keys[perm[i]], tuple(responses[perm[i]][masks[perm[i]].bool()].tolist())) for i in order]
    assert [r for k, r in stored if k == "p"] == [(3, 9, 9), (5, 4), (5, 6)]
    assert [r for k, r in stored if k == "q"] == [(1, 1), (9,)]
    # a padding position outside the mask does not count; equal responses keep their row order
    assert canonical_insert_order(["p", "p"], [t(7, 1), t(7, 2)], [t(1, 0), t(1, 0)]) == [0, 1]
