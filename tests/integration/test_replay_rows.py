"""A replayed response becomes a complete verl row: prompt fields copied, response fields replaced."""

from __future__ import annotations

import numpy as np
import torch

from repo_ext.algorithm.store import ReplayEntry, ReplayStore
from repo_ext.integration.replay_rows import (
    OFF_POLICY_FIELD,
    OFF_POLICY_UID_SUFFIX,
    build_replay_row,
    prompt_key,
    response_order_key,
    split_uid,
)


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


def test_a_tool_masked_entry_is_replayed_with_exactly_its_mask():
    # tokens 2-4 are tool output: out of the loss, but attended to and at their positions
    store = ReplayStore(max_cache_size=2, min_cache_to_replay=1)
    mask = [1, 1, 0, 0, 0, 1]
    store.insert("p", np.array([11, 12, 90, 91, 92, 13]), np.array([-0.5, -1, 0, 0, 0, -2], np.float32), 1.0, 2, loss_mask=mask)
    [entry] = store.entries("p")
    row = build_replay_row(_template(), entry, session_id=10_000)
    assert row["response_mask"].tolist() == mask and row["loss_mask"].tolist() == mask
    assert row["response_mask"].dtype == torch.int64 and row["loss_mask"].dtype == torch.int64
    assert row["attention_mask"].tolist() == [1] * 9  # 3 prompt + 6 response tokens, tool tokens included
    assert row["position_ids"].tolist() == list(range(9))
    assert row["input_ids"].tolist() == [5, 6, 7, 11, 12, 90, 91, 92, 13]
    assert row["rm_scores"].tolist() == [0, 0, 0, 0, 0, 1.0]
    # the row's mask is its own tensor: changing it does not touch the stored entry
    row["loss_mask"][0] = 0
    assert row["response_mask"][0] == 1 and store.entries("p")[0].loss_mask.tolist() == [bool(m) for m in mask]


def _t(*ids):
    return torch.tensor(ids)


def _hash_order_written_out(responses, masks, seed):
    """response_order_key's formula, written out: keyed BLAKE2b-64 of len(ids bytes), ids (int64), mask (int8)."""
    import hashlib

    def key(ids, mask):
        raw = np.asarray(ids, dtype="<i8").tobytes()
        h = hashlib.blake2b(key=seed.to_bytes(8, "little"), digest_size=8)
        h.update(len(raw).to_bytes(8, "little") + raw + np.asarray(mask, dtype="i1").tobytes())
        return h.digest()

    return sorted(range(len(responses)), key=lambda i: (key(responses[i].tolist(), masks[i].tolist()), i))


def test_canonical_insert_order_sorts_each_prompts_rows_by_a_seeded_hash():
    from repo_ext.integration.replay_rows import canonical_insert_order

    keys = ["p", "q", "p", "p", "q"]
    responses = [_t(5, 6, 0), _t(9, 0, 0), _t(3, 9, 9), _t(5, 4, 0), _t(1, 1, 0)]
    masks = [_t(1, 1, 0), _t(1, 0, 0), _t(1, 1, 1), _t(1, 1, 0), _t(1, 1, 0)]
    for seed in (0, 42, 2**63 + 5):
        order = canonical_insert_order(keys, responses, masks, seed)
        # each prompt keeps its slots (p at 0, 2, 3; q at 1, 4), filled in hash order
        p_rows, q_rows = [0, 2, 3], [1, 4]
        p_sorted = [p_rows[i] for i in _hash_order_written_out([responses[i] for i in p_rows], [masks[i] for i in p_rows], seed)]
        q_sorted = [q_rows[i] for i in _hash_order_written_out([responses[i] for i in q_rows], [masks[i] for i in q_rows], seed)]
        assert [order[i] for i in p_rows] == p_sorted and [order[i] for i in q_rows] == q_sorted
        # the same responses handed to the rows in another order give the same stored sequence
        perm = [3, 4, 0, 2, 1]
        again = canonical_insert_order([keys[i] for i in perm], [responses[i] for i in perm], [masks[i] for i in perm], seed)
        assert [perm[i] for i in again] == order
        # identical inputs (fresh tensors) give the identical order
        assert canonical_insert_order(list(keys), [r.clone() for r in responses], [m.clone() for m in masks], seed) == order
    # equal responses keep their row order
    assert canonical_insert_order(["p", "p"], [_t(7, 1), _t(7, 1)], [_t(1, 1), _t(1, 1)], 3) == [0, 1]
    # the mask is part of the response: a tool token differs from a generated one
    assert response_order_key(_t(7, 1), _t(1, 1), 3) != response_order_key(_t(7, 1), _t(1, 0), 3)
    assert response_order_key(_t(7, 1), _t(1, 1), 3) == response_order_key(_t(7, 1), _t(1, 1), 3)


def test_insert_order_carries_no_lexicographic_bias():
    """Over 4000 prompts of G=4 distinct random responses (fixed seeds: deterministic, cannot flake),
    where the lexicographically largest response lands is uniform over the 4 places (1/G each), and
    the hash order's rank correlation with the lexicographic order is about 0. Sorted by tokens, the
    largest would land last every time (1.0) and the correlation would be 1."""
    from repo_ext.integration.replay_rows import canonical_insert_order

    group, prompts = 4, 4000
    rng = np.random.default_rng(2026)
    place_of_largest = np.zeros(group, dtype=np.int64)
    tau_sum = 0.0
    for _ in range(prompts):
        responses = []
        while len(responses) < group:
            r = tuple(int(x) for x in rng.integers(0, 50, size=int(rng.integers(1, 6))))
            if r not in responses:
                responses.append(r)
        order = canonical_insert_order(["p"] * group, [torch.tensor(r) for r in responses],
                                       [torch.ones(len(r), dtype=torch.int64) for r in responses], seed=42)
        stored = [responses[i] for i in order]
        place_of_largest[stored.index(max(responses))] += 1
        # Kendall's tau between the stored order and the lexicographic order
        pairs = [(a, b) for a in range(group) for b in range(a + 1, group)]
        tau_sum += sum(1 if stored[a] < stored[b] else -1 for a, b in pairs) / len(pairs)
    expected = prompts / group  # 1000; binomial sd sqrt(4000 * 1/4 * 3/4) = 27.4
    assert all(abs(count - expected) < 110 for count in place_of_largest), place_of_largest  # within 4 sd
    assert abs(tau_sum / prompts) < 0.03  # sd of the mean about 0.4 / sqrt(4000) = 0.0065


def test_insert_order_changes_with_the_seed():
    from repo_ext.integration.replay_rows import canonical_insert_order

    responses = [_t(i, i + 1) for i in range(6)]
    masks = [_t(1, 1)] * 6
    orders = {tuple(canonical_insert_order(["p"] * 6, responses, masks, seed)) for seed in range(10)}
    assert len(orders) >= 8  # 720 possible orders: 10 seeds almost surely give (nearly) 10 different ones
