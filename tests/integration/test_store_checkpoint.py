"""Saving/restoring the store next to verl's checkpoint: exact round trip, damage detected."""

from __future__ import annotations

import numpy as np
import pytest

from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.store_checkpoint import STORE_FILENAME, load_store_state, save_store_state


def _filled_store() -> ReplayStore:
    store = ReplayStore(max_cache_size=3, min_cache_to_replay=2, max_store_bytes=10_000, seed=7)
    rng = np.random.default_rng(0)
    for step in range(1, 6):
        for p in range(4):
            n = int(rng.integers(1, 9))
            store.insert(f"p{p}", rng.integers(0, 100, n), rng.normal(size=n).astype(np.float32), float(rng.integers(0, 2)), step)
    return store


def _entries(store: ReplayStore, keys):
    return {k: [(e.response_ids.tobytes(), e.behaviour_log_probs.tobytes(), e.reward, e.step) for e in store.entries(k)] for k in keys}


def test_round_trip_is_exact(tmp_path):
    store = _filled_store()
    save_store_state(store.state_dict(), tmp_path / "global_step_5", 5)
    restored = ReplayStore(max_cache_size=3, min_cache_to_replay=2, max_store_bytes=10_000, seed=7)
    restored.load_state_dict(load_store_state(tmp_path / "global_step_5", expected_step=5))
    keys = [f"p{p}" for p in range(4)]
    assert _entries(restored, keys) == _entries(store, keys)
    assert restored.stats() == store.stats()
    # random_k continues identically after the restore
    assert _entries_random(restored) == _entries_random(store)


def _entries_random(store):
    return [[e.step for e in store.retrieve("p1", "random_k", 2)] for _ in range(5)]


def test_damaged_file_is_an_error(tmp_path):
    store = _filled_store()
    path = save_store_state(store.state_dict(), tmp_path, 3)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged"):
        load_store_state(tmp_path)


def test_truncated_file_is_an_error(tmp_path):
    path = save_store_state(_filled_store().state_dict(), tmp_path, 3)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="damaged"):
        load_store_state(tmp_path)


def test_missing_and_wrong_step(tmp_path):
    with pytest.raises(FileNotFoundError, match=STORE_FILENAME):
        load_store_state(tmp_path)
    save_store_state(_filled_store().state_dict(), tmp_path, 3)
    with pytest.raises(ValueError, match="step 3"):
        load_store_state(tmp_path, expected_step=4)
