"""ReplayStore: FIFO capacity, gate, exact bytes and global eviction order, state round-trip, validation."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repo_ext.algorithm.store import ReplayEntry, ReplayStore


def add(store: ReplayStore, key: str, num_tokens: int, reward: float = 0.0, step: int = 0, first_id: int = 0):
    ids = np.arange(first_id, first_id + num_tokens)
    store.insert(key, ids, -0.01 * np.arange(1, num_tokens + 1, dtype=np.float32), reward, step)


def steps(store: ReplayStore, key: str) -> list[int]:
    return [entry.step for entry in store.entries(key)]


# ---------------------------------------------------------------- capacity and gate


def test_per_prompt_fifo_capacity():
    store = ReplayStore(max_cache_size=3, min_cache_to_replay=1)
    for step in range(5):
        add(store, "a", 2, step=step)
    add(store, "b", 2, step=9)
    assert steps(store, "a") == [2, 3, 4]
    assert steps(store, "b") == [9]
    assert (store.num_entries, store.num_prompts, store.num_inserted) == (4, 2, 6)
    assert (store.num_capacity_evictions, store.num_byte_evictions, store.num_evictions) == (2, 0, 2)
    assert store.nbytes == 4 * 2 * 8


def test_gate_and_k():
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=3)
    add(store, "a", 1, step=0)
    add(store, "a", 1, step=1)
    assert store.retrieve("a", "all", 8) == [] and store.retrieve("a", "recent_k", 8) == []
    assert store.num_replayable_prompts == 0
    add(store, "a", 1, step=2)
    assert store.num_replayable_prompts == 1
    assert [e.step for e in store.retrieve("a", "recent_k", 8)] == [0, 1, 2]  # k = min(3, 8)
    assert [e.step for e in store.retrieve("a", "recent_k", 2)] == [1, 2]
    assert store.retrieve("a", "none", 2) == []
    assert store.retrieve("unknown", "all", 2) == []
    with pytest.raises(ValueError, match="recent_k"):
        store.retrieve("a", "newest", 2)


def test_retrieve_strategies_on_the_store():
    store = ReplayStore(max_cache_size=5, min_cache_to_replay=5, seed=3)
    for step, reward in enumerate([0.0, 1.0, 0.5, 1.0, 0.0]):
        add(store, "a", 2, reward=reward, step=step)
    assert [e.step for e in store.retrieve("a", "highest_k", 2)] == [1, 3]
    assert [e.step for e in store.retrieve("a", "max_variance_k", 2)] == [1, 4]  # a 1 (older) and a 0 (newer)
    assert [e.step for e in store.retrieve("a", "all", 1)] == [0, 1, 2, 3, 4]
    drawn = [e.step for e in store.retrieve("a", "random_k", 3)]
    assert len(set(drawn)) == 3 and drawn == sorted(drawn)


# ---------------------------------------------------------------- entries, bytes, validation


def test_exact_bytes_and_bit_exact_log_probs():
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=1)
    log_probs = np.array([-0.1, -1e-30, -3.4e38, -0.0, -7.25, -1.0, -2.0, -3.0, -4.0, -5.0], dtype=np.float32)
    ids = np.arange(10, dtype=np.int64)
    store.insert("a", ids, log_probs, 1.0, 0)
    assert store.nbytes == 10 * 4 + 10 * 4  # int32 ids + float32 log-probs
    entry = store.entries("a")[0]
    assert entry.nbytes == 80
    assert entry.response_ids.dtype == np.int32 and entry.behaviour_log_probs.dtype == np.float32
    assert entry.behaviour_log_probs.view(np.uint32).tolist() == log_probs.view(np.uint32).tolist()
    # a copy: changing the caller's arrays does not change the store, and stored arrays are read-only
    log_probs[0] = 0.5
    ids[0] = 99
    assert entry.behaviour_log_probs[0] == np.float32(-0.1) and entry.response_ids[0] == 0
    with pytest.raises(ValueError):
        entry.behaviour_log_probs[0] = 1.0
    # float64 log-probs are stored as float32: still 8 bytes per token
    store.insert("a", [1, 2, 3], np.array([-0.5, -0.25, -0.125]), 0.0, 1)
    assert store.nbytes == 80 + 24
    # torch tensors work too
    store.insert("b", torch.tensor([4, 5]), torch.tensor([-0.5, -0.5]), 1, 2)
    assert store.nbytes == 80 + 24 + 16


def test_empty_response_is_accepted_with_zero_bytes():
    store = ReplayStore(max_cache_size=2, min_cache_to_replay=1, max_store_bytes=16)
    store.insert("a", np.array([], dtype=np.int64), np.array([], dtype=np.float32), 1.0, 0)
    assert store.nbytes == 0 and store.num_entries == 1
    assert store.retrieve("a", "all", 1)[0].response_ids.shape == (0,)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((7, [1, 2], [-0.1, -0.2], 0.0, 0), "prompt_key"),
        (("a", [1, 2, 3], [-0.1, -0.2], 0.0, 0), "does not match"),
        (("a", [[1, 2]], [[-0.1, -0.2]], 0.0, 0), "1-D"),
        (("a", [1.0, 2.0], [-0.1, -0.2], 0.0, 0), "integer token ids"),
        (("a", [1, 2**40], [-0.1, -0.2], 0.0, 0), "int32"),
        (("a", [1, 2], [-0.1, float("nan")], 0.0, 0), "finite"),
        (("a", [1, 2], [-0.1, -float("inf")], 0.0, 0), "finite"),
        (("a", [1, 2], [1, 2], 0.0, 0), "floating point"),
        (("a", [1, 2], [-0.1, -0.2], float("nan"), 0), "reward"),
        (("a", [1, 2], [-0.1, -0.2], "high", 0), "reward"),
        (("a", [1, 2], [-0.1, -0.2], 0.0, -1), "step"),
        (("a", [1, 2], [-0.1, -0.2], 0.0, 1.5), "step"),
    ],
)
def test_insert_validation(args, message):
    store = ReplayStore(max_cache_size=2, min_cache_to_replay=1)
    with pytest.raises(ValueError, match=message):
        store.insert(*args)
    assert store.num_entries == 0 and store.nbytes == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_cache_size": 0, "min_cache_to_replay": 1}, "max_cache_size"),
        ({"max_cache_size": 4, "min_cache_to_replay": 5}, r"min_cache_to_replay=5 .*\[1, 4\]"),
        ({"max_cache_size": 4, "min_cache_to_replay": 0}, "min_cache_to_replay"),
        ({"max_cache_size": 4, "min_cache_to_replay": 1, "max_store_bytes": 0}, "max_store_bytes"),
        ({"max_cache_size": 4, "min_cache_to_replay": 1, "seed": -1}, "seed"),
        ({"max_cache_size": 4.0, "min_cache_to_replay": 1}, "max_cache_size"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReplayStore(**kwargs)


def test_entry_checks_its_own_dtypes():
    with pytest.raises(ValueError, match="int32"):
        ReplayEntry(np.arange(3), np.zeros(3, np.float32), 0.0, 0)


# ---------------------------------------------------------------- the global byte cap


def test_byte_cap_evicts_the_globally_oldest_first():
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=1, max_store_bytes=200)
    add(store, "a", 10, step=0)  # 80 bytes
    add(store, "b", 10, step=1)  # 80 -> 160
    add(store, "a", 5, step=2)  # 40 -> 200: at the cap, nothing evicted
    assert store.nbytes == 200 and store.num_byte_evictions == 0
    add(store, "c", 3, step=3)  # 24 -> 224 > 200: evict a's step 0 (the oldest insertion) -> 144
    assert store.nbytes == 144 and store.num_byte_evictions == 1
    assert (steps(store, "a"), steps(store, "b"), steps(store, "c")) == ([2], [1], [3])
    add(store, "c", 10, step=4)  # 80 -> 224: evict b's step 1 -> 144; b is now empty and removed
    assert store.nbytes == 144 and "b" not in store and store.num_prompts == 2
    add(store, "c", 12, step=5)  # 96 -> 240: evict a's step 2 (40) -> 200; a removed
    assert store.nbytes == 200 and store.num_prompts == 1 and steps(store, "c") == [3, 4, 5]
    assert (store.num_byte_evictions, store.num_capacity_evictions, store.num_evictions) == (3, 0, 3)
    assert store.stats() == {
        "num_prompts": 1, "num_replayable_prompts": 1, "num_entries": 3, "num_masked_entries": 0, "nbytes": 200,
        "max_store_bytes": 200,
        "num_inserted": 6, "num_evictions": 3, "num_capacity_evictions": 0, "num_byte_evictions": 3,
    }


def test_entry_larger_than_the_cap_is_rejected_and_changes_nothing():
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=1, max_store_bytes=100)
    add(store, "a", 10)
    with pytest.raises(ValueError, match=r"13 tokens needs 104 bytes.*max_store_bytes=100"):
        add(store, "b", 13)
    assert store.nbytes == 80 and store.num_entries == 1 and store.num_inserted == 1


class NaiveStore:
    """The eviction rules written out with plain lists: (insertion number, key, step, bytes)."""

    def __init__(self, max_cache_size: int, max_store_bytes: int | None):
        self.max_cache_size, self.max_store_bytes = max_cache_size, max_store_bytes
        self.entries: list[tuple[int, str, int, int]] = []
        self.capacity_evictions = self.byte_evictions = 0

    def insert(self, seq: int, key: str, step: int, nbytes: int) -> None:
        self.entries.append((seq, key, step, nbytes))
        mine = [e for e in self.entries if e[1] == key]
        if len(mine) > self.max_cache_size:
            self.entries.remove(mine[0])
            self.capacity_evictions += 1
        while self.max_store_bytes is not None and sum(e[3] for e in self.entries) > self.max_store_bytes:
            self.entries.remove(min(self.entries))
            self.byte_evictions += 1

    def steps(self, key: str) -> list[int]:
        return [e[2] for e in self.entries if e[1] == key]


def check_against_naive(ops, max_cache_size, max_store_bytes):
    store = ReplayStore(max_cache_size=max_cache_size, min_cache_to_replay=1, max_store_bytes=max_store_bytes)
    naive = NaiveStore(max_cache_size, max_store_bytes)
    for seq, (key, num_tokens) in enumerate(ops):
        add(store, key, num_tokens, step=seq)
        naive.insert(seq, key, seq, 8 * num_tokens)
    keys = sorted({key for key, _ in ops})
    assert {k: steps(store, k) for k in keys} == {k: naive.steps(k) for k in keys}
    assert store.nbytes == sum(e[3] for e in naive.entries)
    assert store.num_entries == len(naive.entries)
    assert store.num_prompts == len({e[1] for e in naive.entries})
    assert (store.num_capacity_evictions, store.num_byte_evictions) == (naive.capacity_evictions, naive.byte_evictions)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 12)), max_size=60),
    max_cache_size=st.integers(1, 4),
    max_store_bytes=st.one_of(st.none(), st.integers(96, 400)),
)
def test_eviction_equals_the_rules_written_out(ops, max_cache_size, max_store_bytes):
    check_against_naive(ops, max_cache_size, max_store_bytes)


def test_eviction_equals_the_rules_over_a_long_run():
    # thousands of capacity evictions and, now and then, a byte-cap eviction: the store compacts
    # its insertion-order queue (entries already evicted by capacity) several times on the way
    rng = np.random.default_rng(0)
    ops = [(f"p{rng.integers(0, 30)}", int(rng.integers(1, 20))) for _ in range(8000)]
    check_against_naive(ops, max_cache_size=3, max_store_bytes=7600)


def test_byte_eviction_right_after_compaction_keeps_the_global_order():
    # "cold" holds the two oldest entries; 1100 inserts into "hot" (capacity 2) force a compaction
    # of the insertion-order queue; then one large insert must evict cold's oldest entry first
    ops = [("cold", 5), ("cold", 5)] + [("hot", 1)] * 1100 + [("big", 40)]
    check_against_naive(ops, max_cache_size=2, max_store_bytes=400)


def test_memory_of_the_eviction_queue_stays_bounded():
    # capacity evictions leave stale items in the insertion-order queue; they must be dropped
    store = ReplayStore(max_cache_size=2, min_cache_to_replay=1)
    for step in range(5000):
        add(store, f"p{step % 10}", 1, step=step)
    assert store.num_entries == 20
    assert len(store._order) <= 2 * 1024 + store.num_entries  # O(entries), not O(insertions)


# ---------------------------------------------------------------- state round-trip


def fill(store: ReplayStore, rng: np.random.Generator, num: int, first_step: int) -> None:
    for i in range(num):
        length = int(rng.integers(0, 9))
        store.insert(
            f"prompt-{rng.integers(0, 6)}",
            rng.integers(0, 50_000, size=length),
            (-rng.random(length) * 5).astype(np.float32),
            float(rng.integers(0, 2)) + 0.5 * float(rng.random()),
            first_step + i,
        )


def snapshot(store: ReplayStore) -> dict:
    state = store.state_dict()
    contents = {
        key: [(e.response_ids.tobytes(), e.behaviour_log_probs.tobytes(), e.reward, e.step) for e in store.entries(key)]
        for key in state["prompt_keys"]
    }
    return {"keys": state["prompt_keys"], "contents": contents, "stats": store.stats()}


def random_k_draws(store: ReplayStore, rounds: int) -> list[list[int]]:
    return [[e.step for e in store.retrieve(f"prompt-{i % 6}", "random_k", 3)] for i in range(rounds)]


@pytest.mark.parametrize("max_store_bytes", [None, 400])
def test_state_round_trip_is_exact(max_store_bytes):
    rng = np.random.default_rng(1)
    store = ReplayStore(max_cache_size=5, min_cache_to_replay=2, max_store_bytes=max_store_bytes, seed=9)
    fill(store, rng, 80, first_step=0)
    random_k_draws(store, 7)  # advance the random_k generator
    assert store.num_evictions > 0

    state = pickle.loads(pickle.dumps(store.state_dict()))
    restored = ReplayStore(max_cache_size=5, min_cache_to_replay=2, max_store_bytes=max_store_bytes, seed=123)
    restored.load_state_dict(state)
    assert snapshot(restored) == snapshot(store)

    # both continue identically: random_k draws, inserts with evictions, counters
    assert random_k_draws(restored, 12) == random_k_draws(store, 12)
    fill(store, np.random.default_rng(2), 60, first_step=100)
    fill(restored, np.random.default_rng(2), 60, first_step=100)
    assert snapshot(restored) == snapshot(store)
    assert random_k_draws(restored, 12) == random_k_draws(store, 12)


def test_state_survives_torch_save():
    store = ReplayStore(max_cache_size=3, min_cache_to_replay=1, max_store_bytes=300)
    fill(store, np.random.default_rng(3), 30, first_step=0)
    buffer = io.BytesIO()
    torch.save(store.state_dict(), buffer)
    buffer.seek(0)
    restored = ReplayStore(max_cache_size=3, min_cache_to_replay=1, max_store_bytes=300)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    assert snapshot(restored) == snapshot(store)


def test_state_of_an_empty_store_round_trips():
    store = ReplayStore(max_cache_size=2, min_cache_to_replay=1)
    restored = ReplayStore(max_cache_size=2, min_cache_to_replay=1)
    restored.load_state_dict(store.state_dict())
    assert snapshot(restored) == snapshot(store)


def test_load_recomputes_the_gate_count_for_a_new_min_cache_to_replay():
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=1)
    for key, count in (("a", 1), ("b", 3), ("c", 4)):
        for i in range(count):
            add(store, key, 2, step=i)
    restored = ReplayStore(max_cache_size=4, min_cache_to_replay=3)
    restored.load_state_dict(store.state_dict())
    assert restored.num_replayable_prompts == 2 and restored.retrieve("a", "all", 1) == []


def test_load_validation():
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=1)
    fill(store, np.random.default_rng(4), 20, first_step=0)
    state = store.state_dict()
    with pytest.raises(ValueError, match="max_cache_size=4 but this store has max_cache_size=3"):
        ReplayStore(max_cache_size=3, min_cache_to_replay=1).load_state_dict(state)
    with pytest.raises(ValueError, match="max_store_bytes=8"):
        ReplayStore(max_cache_size=4, min_cache_to_replay=1, max_store_bytes=8).load_state_dict(state)
    with pytest.raises(ValueError, match="not a ReplayStore state"):
        ReplayStore(max_cache_size=4, min_cache_to_replay=1).load_state_dict({"entries": []})
    with pytest.raises(ValueError, match="missing reward"):
        ReplayStore(max_cache_size=4, min_cache_to_replay=1).load_state_dict(
            {key: value for key, value in state.items() if key != "reward"}
        )
    corrupt = dict(state, reward=state["reward"][:-1])
    target = ReplayStore(max_cache_size=4, min_cache_to_replay=1)
    add(target, "keep", 3)
    with pytest.raises(ValueError, match="corrupt"):
        target.load_state_dict(corrupt)
    assert steps(target, "keep") == [0]  # a failed load leaves the store as it was


# ---------------------------------------------------------------- loss masks (multi-turn tool output)

from repo_ext.algorithm.loss_mask import pack_loss_mask, unpack_loss_mask  # noqa: E402
from repo_ext.algorithm.store import entry_nbytes  # noqa: E402


@pytest.mark.parametrize(
    ("mask", "bits"),
    [
        # token i is bit i % 8 (least significant first) of byte i // 8, worked out by hand:
        # tokens 0,1,5,6,7 -> 1 + 2 + 32 + 64 + 128 = 227; token 8 -> 1
        ([1, 1, 0, 0, 0, 1, 1, 1, 1, 0], [227, 1]),
        ([0, 1, 1, 1, 1, 1, 1, 1], [254]),  # all but token 0: 255 - 1
        ([1] * 15 + [0], [255, 127]),  # all but token 15: byte 1 lacks its top bit
        ([0, 0, 1], [4]),  # only token 2; the 5 unused high bits stay 0
        ([1, 0] * 5 + [1], [0b01010101, 0b00000101]),  # tokens 0,2,4,6 | 8,10
        ([1] * 9, None),  # all ones: stored as no mask at all
        ([], None),
    ],
)
def test_loss_mask_encoding_matches_hand_written_bits(mask, bits):
    packed = pack_loss_mask(np.array(mask, dtype=np.int64))
    assert (packed is None) == (bits is None)
    if bits is not None:
        assert packed.dtype == np.uint8 and packed.tolist() == bits
    assert unpack_loss_mask(packed, len(mask)).tolist() == [bool(m) for m in mask]
    # bool and torch input encode the same
    for variant in (np.array(mask, dtype=bool), torch.tensor(mask, dtype=torch.int64).numpy()):
        again = pack_loss_mask(variant)
        assert (None if again is None else again.tolist()) == bits


def test_masked_entries_are_stored_with_their_mask_and_counted_in_bytes():
    store = ReplayStore(max_cache_size=2, min_cache_to_replay=1)
    mask = [1, 1, 1, 0, 0, 0, 1, 1, 1, 1]  # tokens 3-5: tool output
    store.insert("a", np.arange(10), -np.ones(10, np.float32), 1.0, 0, loss_mask=mask)
    [entry] = store.entries("a")
    assert entry.loss_mask.tolist() == [bool(m) for m in mask]
    assert entry.loss_mask_bits.tolist() == [1 + 2 + 4 + 64 + 128, 1 + 2]  # tokens 0,1,2,6,7 | 8,9
    assert entry.nbytes == 10 * 8 + 2 == entry_nbytes(10, masked=True)  # 8 bytes per token + 1 bit per token
    store.insert("a", np.arange(10), -np.ones(10, np.float32), 0.0, 1, loss_mask=np.ones(10, bool))
    assert store.entries("a")[1].loss_mask_bits is None and store.entries("a")[1].loss_mask.all()
    assert store.nbytes == 82 + 80 and entry_nbytes(10, masked=False) == 80
    assert store.num_masked_entries == 1 and store.stats()["num_masked_entries"] == 1
    store.insert("a", np.arange(3), -np.ones(3, np.float32), 0.0, 2)  # evicts the masked entry (capacity 2)
    assert store.num_masked_entries == 0 and store.nbytes == 80 + 24
    # 17 tokens take 3 mask bytes
    store.insert("b", np.arange(17), np.zeros(17, np.float32), 0.0, 3, loss_mask=[0] + [1] * 16)
    assert store.entries("b")[0].nbytes == 17 * 8 + 3


def test_byte_cap_counts_mask_bytes():
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=1, max_store_bytes=82)
    store.insert("a", np.arange(10), np.zeros(10, np.float32), 1.0, 0, loss_mask=[0] + [1] * 9)  # 80 + 2: at the cap
    assert store.nbytes == 82 and store.num_byte_evictions == 0
    store.insert("b", np.arange(1), np.zeros(1, np.float32), 1.0, 1)  # 90 > 82: a evicted
    assert store.nbytes == 8 and "a" not in store and store.num_masked_entries == 0 and store.num_byte_evictions == 1
    with pytest.raises(ValueError, match="10 tokens needs 82 bytes"):
        ReplayStore(max_cache_size=4, min_cache_to_replay=1, max_store_bytes=81).insert(
            "c", np.arange(10), np.zeros(10, np.float32), 1.0, 2, loss_mask=[1] * 9 + [0]
        )


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        ([0, 0, 0], "all zero"),  # only tool output: nothing to train on
        ([1, 2, 1], "only 0 and 1"),
        ([1, 0], "one flag per token"),
        ([[1, 0, 1]], "one flag per token"),
        (np.array([1.0, 0.0, 1.0]), "only 0 and 1"),
    ],
)
def test_invalid_loss_masks_are_rejected_atomically(mask, match):
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=1)
    add(store, "keep", 2)
    before = store.stats()
    with pytest.raises(ValueError, match=match):
        store.insert("new", np.arange(3), np.zeros(3, np.float32), 1.0, 1, loss_mask=mask)
    assert store.stats() == before and "new" not in store


def test_entry_checks_its_mask_bits_are_canonical():
    ids, logp = np.arange(10, dtype=np.int32), np.zeros(10, np.float32)
    assert ReplayEntry(ids, logp, 0.0, 0, np.array([254, 3], np.uint8)).loss_mask.tolist() == [False] + [True] * 9
    for bits, match in (
        (np.array([255, 3], np.uint8), "mix"),  # all ones must be None
        (np.array([0, 0], np.uint8), "mix"),  # all zero
        (np.array([254, 7], np.uint8), "past the last token"),  # bit of token 10 set
        (np.array([254], np.uint8), "2 bytes"),
        (np.array([254, 3], np.int64), "uint8"),
    ):
        with pytest.raises(ValueError, match=match):
            ReplayEntry(ids, logp, 0.0, 0, bits)


def fill_masked(store: ReplayStore, rng: np.random.Generator, num: int, first_step: int) -> None:
    """Like ``fill``, about half the responses with a run of tool tokens (mask 0) inside."""
    for i in range(num):
        length = int(rng.integers(0, 20))
        mask = np.ones(length, dtype=np.int64)
        if length >= 2 and rng.random() < 0.5:
            start = int(rng.integers(0, length - 1))
            mask[start : start + int(rng.integers(1, length - start))] = 0
        store.insert(
            f"prompt-{rng.integers(0, 6)}",
            rng.integers(0, 50_000, size=length),
            (-rng.random(length) * 5).astype(np.float32),
            float(rng.integers(0, 2)),
            first_step + i,
            loss_mask=mask,
        )


def masked_snapshot(store: ReplayStore) -> dict:
    out = snapshot(store)
    out["masks"] = {key: [e.loss_mask.tolist() for e in store.entries(key)] for key in out["keys"]}
    return out


@pytest.mark.parametrize("max_store_bytes", [None, 600])
def test_state_round_trip_keeps_the_masks(max_store_bytes):
    store = ReplayStore(max_cache_size=5, min_cache_to_replay=2, max_store_bytes=max_store_bytes, seed=9)
    fill_masked(store, np.random.default_rng(5), 80, first_step=0)
    assert 0 < store.num_masked_entries < store.num_entries
    # byte accounting recomputed from the masks: 8 per token, ceil(L/8) for a mask with a 0
    expected = sum(
        8 * len(m) + ((len(m) + 7) // 8 if not all(m) else 0) for ms in masked_snapshot(store)["masks"].values() for m in ms
    )
    assert store.nbytes == expected
    state = pickle.loads(pickle.dumps(store.state_dict()))
    restored = ReplayStore(max_cache_size=5, min_cache_to_replay=2, max_store_bytes=max_store_bytes, seed=1)
    restored.load_state_dict(state)
    assert masked_snapshot(restored) == masked_snapshot(store)
    fill_masked(store, np.random.default_rng(6), 40, first_step=100)
    fill_masked(restored, np.random.default_rng(6), 40, first_step=100)
    assert masked_snapshot(restored) == masked_snapshot(store)


def test_a_version_1_state_loads_with_all_ones_masks():
    # version 1 (before masks were stored): the same keys without entry_masked and loss_mask_bits
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=1)
    fill(store, np.random.default_rng(7), 20, first_step=0)
    state = store.state_dict()
    v1 = {k: v for k, v in state.items() if k not in ("entry_masked", "loss_mask_bits")}
    v1["version"] = 1
    restored = ReplayStore(max_cache_size=4, min_cache_to_replay=1)
    restored.load_state_dict(v1)
    assert masked_snapshot(restored) == masked_snapshot(store)
    assert all(all(m) for ms in masked_snapshot(restored)["masks"].values() for m in ms)
    with pytest.raises(ValueError, match="missing entry_masked"):  # a version-2 state must carry its masks
        restored.load_state_dict({k: v for k, v in state.items() if k != "entry_masked"})
    with pytest.raises(ValueError, match="version 3 is unsupported"):
        restored.load_state_dict(dict(state, version=3))


def test_corrupt_mask_arrays_are_refused():
    store = ReplayStore(max_cache_size=5, min_cache_to_replay=1)
    fill_masked(store, np.random.default_rng(8), 30, first_step=0)
    state = store.state_dict()
    target = ReplayStore(max_cache_size=5, min_cache_to_replay=1)
    with pytest.raises(ValueError, match="loss_mask_bits do not match"):
        target.load_state_dict(dict(state, loss_mask_bits=state["loss_mask_bits"][:-1]))
    with pytest.raises(ValueError, match="entry_masked must be"):
        target.load_state_dict(dict(state, entry_masked=state["entry_masked"].astype(np.int64)))
    flipped = state["entry_masked"].copy()
    flipped[np.flatnonzero(~flipped)[0]] = True  # claims a mask for a plain entry: the bits no longer line up
    with pytest.raises(ValueError, match="loss_mask_bits do not match|mix"):
        target.load_state_dict(dict(state, entry_masked=flipped))
    assert target.num_entries == 0
