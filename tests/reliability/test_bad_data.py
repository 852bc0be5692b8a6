"""Bad rows are counted and skipped (or stored, where stated), never crash, never corrupt the store.

``insert_on_policy_rows`` is the one place on-policy rows enter the store; the store itself rejects
invalid entries atomically. After every scenario the store's counters and byte accounting are
checked against values recomputed here from what should have been stored.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.estimators import compute_repo_split_advantage
from repo_ext.integration.replay_rows import OFF_POLICY_UID_SUFFIX
from repo_ext.integration.hooks.insert import insert_on_policy_rows

MAX_LEN = 6


def _row(length, reward=1.0, masked_at=None, logp_bad_at=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (length,), generator=gen)
    mask = torch.ones(length, dtype=torch.int64)
    if masked_at is not None:
        mask[masked_at] = 0  # an index or a slice: tool tokens of a multi-turn response
    logp = -torch.rand(length, generator=gen)
    if logp_bad_at is not None:
        logp[logp_bad_at] = float("nan")
    scores = torch.zeros(length)
    if length:
        scores[-1] = reward
    return ids, mask, logp, scores


def _insert(store, keys, rows, step=1):
    counters = defaultdict(int)
    stored = insert_on_policy_rows(
        store,
        prompt_keys=keys,
        responses=[r[0] for r in rows],
        response_masks=[r[1] for r in rows],
        behaviour_log_probs=[r[2] for r in rows],
        token_scores=[r[3] for r in rows],
        step=step,
        max_response_length=MAX_LEN,
        counters=counters,
    )
    return stored, dict(counters)


def _assert_consistent(store, expected):
    """``expected``: prompt key -> list of (ids, log-probs, reward, step[, loss mask]) in FIFO order;
    no mask given: all ones."""
    expected = {key: [(*e, None) if len(e) == 4 else e for e in entries] for key, entries in expected.items()}
    for key, entries in expected.items():
        got = [
            (e.response_ids.tolist(), e.behaviour_log_probs.tobytes(), e.reward, e.step, e.loss_mask.tolist())
            for e in store.entries(key)
        ]
        want = [
            (ids.tolist(), logp.to(torch.float32).numpy().tobytes(), reward, step,
             [True] * len(ids) if mask is None else [bool(m) for m in mask.tolist()])
            for ids, logp, reward, step, mask in entries
        ]
        assert got == want, key
    kept = [e for entries in expected.values() for e in entries]
    assert store.num_entries == len(kept)
    # int32 id + float32 log-prob per token; a mask with a 0 adds 1 bit per token, in whole bytes
    assert store.nbytes == sum(
        8 * len(ids) + (0 if mask is None or bool(mask.all()) else (len(ids) + 7) // 8) for ids, _, _, _, mask in kept
    )
    assert store.num_prompts == sum(1 for entries in expected.values() if entries)
    # the store's own accounting agrees with its entries
    assert store.nbytes == sum(e.nbytes for key in expected for e in store.entries(key))
    assert store.num_inserted == store.num_entries + store.num_evictions


def test_each_bad_row_is_counted_under_its_reason_and_not_stored():
    store = ReplayStore(max_cache_size=8, min_cache_to_replay=2)
    good = _row(4, reward=1.0, seed=1)
    truncated = _row(MAX_LEN, reward=0.0, seed=2)
    tool = _row(5, masked_at=slice(1, 3), seed=3)  # tool tokens 1-2 masked out (multi-turn): stored with its mask
    rows = [
        good,
        _row(0),  # empty response
        tool,
        _row(4, masked_at=slice(None), seed=7),  # only tool output: nothing for the loss
        _row(3, reward=float("nan"), seed=4),  # the reward function failed
        _row(3, reward=float("inf"), seed=5),
        _row(3, logp_bad_at=1, seed=6),  # NaN behaviour log-prob
        truncated,  # cut at max_response_length: stored, counted
    ]
    stored, counters = _insert(store, ["p"] * len(rows), rows)
    assert stored == 3
    assert counters == {
        "empty_response": 1,
        "no_loss_tokens": 1,
        "nonfinite_reward": 2,
        "nonfinite_log_prob": 1,
        "truncated_at_max_length": 1,
    }
    _assert_consistent(
        store,
        {"p": [(good[0], good[2], 1.0, 1), (tool[0], tool[2], 1.0, 1, tool[1]), (truncated[0], truncated[2], 0.0, 1)]},
    )
    assert store.num_masked_entries == 1


def test_nonfinite_log_probs_outside_the_loss_do_not_block_a_row():
    """A NaN/inf old log-prob on a tool token is never used by the loss: the row is stored, with 0.0 there."""
    store = ReplayStore(max_cache_size=8, min_cache_to_replay=2)
    ids, mask, logp, scores = _row(5, masked_at=slice(2, 4), seed=8)
    logp[2], logp[3] = float("nan"), float("-inf")
    stored, counters = _insert(store, ["p"], [(ids, mask, logp, scores)])
    assert stored == 1 and counters == {}
    expected = logp.clone()
    expected[2] = expected[3] = 0.0
    _assert_consistent(store, {"p": [(ids, expected, 1.0, 1, mask)]})
    # a NaN on a loss token still blocks the row
    ids, mask, logp, scores = _row(5, masked_at=slice(2, 4), seed=9)
    logp[4] = float("nan")
    assert _insert(store, ["p"], [(ids, mask, logp, scores)]) == (0, {"nonfinite_log_prob": 1})


def test_duplicate_prompts_in_a_batch_share_one_buffer_and_its_capacity():
    # the same prompt sampled twice in a step: two verl groups (uids) of 3 rows, one store key
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    rows = [_row(1 + i % 4, reward=float(i), seed=10 + i) for i in range(6)]  # all shorter than MAX_LEN
    stored, counters = _insert(store, ["dup"] * 6, rows, step=3)
    assert stored == 6 and counters == {}
    # FIFO capacity 4: the first two of the six are evicted, in insertion order
    assert store.num_capacity_evictions == 2
    _assert_consistent(store, {"dup": [(r[0], r[2], float(i + 2), 3) for i, r in enumerate(rows[2:])]})


def test_a_batch_of_only_bad_rows_leaves_the_store_untouched():
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=2, max_store_bytes=1000)
    good = _row(3, seed=20)
    _insert(store, ["a"], [good])
    before = store.stats()
    stored, counters = _insert(store, ["a", "b", "c"], [_row(0), _row(2, reward=float("nan")), _row(2, masked_at=slice(None))])
    assert stored == 0 and sum(counters.values()) == 3
    assert store.stats() == before
    _assert_consistent(store, {"a": [(good[0], good[2], 1.0, 1)], "b": [], "c": []})


def test_mismatched_row_shapes_are_a_programming_error_not_bad_data():
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    ids, mask, logp, scores = _row(4)
    with pytest.raises(ValueError, match="same length"):
        _insert(store, ["p"], [(ids, mask, logp[:3], scores)])
    assert store.num_entries == 0


@pytest.mark.parametrize(
    ("ids", "logp", "reward", "step", "match"),
    [
        (np.array([1, 2]), np.array([-0.1, float("nan")]), 1.0, 1, "finite"),
        (np.array([1, 2]), np.array([-0.1, -0.2]), float("nan"), 1, "finite number"),
        (np.array([1, 2]), np.array([-0.1, -0.2]), None, 1, "finite number"),
        (np.array([1, 2]), np.array([-0.1]), 1.0, 1, "does not match"),
        (np.array([[1, 2]]), np.array([[-0.1, -0.2]]), 1.0, 1, "1-D"),
        (np.array([1.5, 2.0]), np.array([-0.1, -0.2]), 1.0, 1, "integer token ids"),
        (np.array([1, 2]), np.array([-0.1, -0.2]), 1.0, -1, "step"),
        (np.arange(200), -np.ones(200), 1.0, 1, "max_store_bytes"),  # 1600 bytes > the 1000-byte cap
    ],
)
def test_store_rejects_invalid_entries_atomically(ids, logp, reward, step, match):
    store = ReplayStore(max_cache_size=3, min_cache_to_replay=2, max_store_bytes=1000, seed=1)
    store.insert("keep", np.array([7, 8, 9]), np.array([-1.0, -2.0, -3.0], np.float32), 0.5, 0)
    before = store.stats()
    with pytest.raises(ValueError, match=match):
        store.insert("new", ids, logp, reward, step)
    assert store.stats() == before
    assert "new" not in store
    [entry] = store.entries("keep")
    assert entry.response_ids.tolist() == [7, 8, 9] and entry.reward == 0.5
    # the store still works normally afterwards
    store.insert("new", np.array([1]), np.array([-0.5]), 1.0, 2)
    assert store.num_entries == 2 and store.nbytes == 24 + 8


def test_nonfinite_reward_counts_as_zero_in_the_advantage():
    # prompt g: rewards [1, NaN, 0] -> [1, 0, 0]; prompt h replayed: [inf, 1] -> [0, 1]
    scores = [1.0, float("nan"), 0.0, float("inf"), 1.0]
    uids = np.array(["g", "g", "g", "h" + OFF_POLICY_UID_SUFFIX, "h" + OFF_POLICY_UID_SUFFIX], dtype=object)
    rewards = torch.zeros(5, 2)
    rewards[:, -1] = torch.tensor(scores)
    cfg = {"adv_estimator": "repo_split", "repo": {"strategy": "none", "epsilon": 1e-6}}
    from omegaconf import OmegaConf

    adv, _ = compute_repo_split_advantage(rewards, torch.ones(5, 2), config=OmegaConf.create(cfg), index=uids)
    assert torch.isfinite(adv).all()
    std_g = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    std_h = math.sqrt(0.5)
    expected = [(2 / 3) / (std_g + 1e-6), (-1 / 3) / (std_g + 1e-6), (-1 / 3) / (std_g + 1e-6),
                -0.5 / (std_h + 1e-6), 0.5 / (std_h + 1e-6)]
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected), rtol=1e-6, atol=1e-6)
