"""Saving/restoring the store with verl's checkpoint: exact round trip (loss masks included), extra
values, damage detected, the file format written out by hand, and the version-1 (pickle) and
version-2 (no loss masks) files of earlier releases."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct

import numpy as np
import pytest

from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.store_checkpoint import STORE_FILENAME, load_store_state, save_store_state, store_path


def _filled_store(masked: bool = True) -> ReplayStore:
    """20 inserts into 4 prompts; with ``masked``, every other response of 2+ tokens has a run of
    tool tokens (loss mask 0) after its first token."""
    store = ReplayStore(max_cache_size=3, min_cache_to_replay=2, max_store_bytes=10_000, seed=7)
    rng = np.random.default_rng(0)
    for step in range(1, 6):
        for p in range(4):
            n = int(rng.integers(1, 20))
            mask = np.ones(n, dtype=np.int64)
            if masked and n >= 2 and (step + p) % 2:
                mask[1 : 1 + int(rng.integers(1, n))] = 0
            store.insert(
                f"p{p}", rng.integers(0, 100, n), rng.normal(size=n).astype(np.float32), float(rng.integers(0, 2)), step,
                loss_mask=mask,
            )
    if masked:
        assert 0 < store.num_masked_entries < store.num_entries
    return store


def _empty_store() -> ReplayStore:
    return ReplayStore(max_cache_size=3, min_cache_to_replay=2, max_store_bytes=10_000, seed=7)


KEYS = [f"p{p}" for p in range(4)]


def _entries(store: ReplayStore, keys=KEYS):
    return {
        k: [
            (e.response_ids.tobytes(), e.behaviour_log_probs.tobytes(), e.reward, e.step, e.loss_mask.tolist())
            for e in store.entries(k)
        ]
        for k in keys
    }


def _entries_random(store):
    return [[e.step for e in store.retrieve("p1", "random_k", 2)] for _ in range(5)]


def test_round_trip_is_exact(tmp_path):
    store = _filled_store()
    path = save_store_state(store, tmp_path / "global_step_5", 5)
    assert path == tmp_path / "global_step_5" / "actor" / STORE_FILENAME  # inside verl's actor checkpoint
    restored = _empty_store()
    assert load_store_state(restored, tmp_path / "global_step_5", expected_step=5) == {}
    assert _entries(restored) == _entries(store)
    assert restored.stats() == store.stats()
    # random_k continues identically after the restore
    assert _entries_random(restored) == _entries_random(store)
    assert not list(path.parent.glob(".*tmp*"))  # no temporary file left behind


def test_extra_round_trip(tmp_path):
    extra = {"total_injected": 123, "bad_rows": {"nonfinite_reward": 4, "duplicate_prompt_groups": 0}}
    save_store_state(_filled_store(), tmp_path, 2, extra=extra)
    assert load_store_state(_empty_store(), tmp_path, expected_step=2) == extra


@pytest.mark.parametrize("extra", [{"x": object()}, {"x": float("nan")}, {"x": np.int64(3)}, {1: 2}, {"x": (1, 2)}])
def test_extra_must_be_json(tmp_path, extra):
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_store_state(_filled_store(), tmp_path, 2, extra=extra)
    assert not store_path(tmp_path).exists()


def test_file_layout_matches_the_documented_format(tmp_path):
    """Parse the file by hand from the format in store_checkpoint's docstring."""
    store = _filled_store()
    raw = save_store_state(store, tmp_path, 5, extra={"a": 1}).read_bytes()
    assert raw[:8] == b"REPOST03"
    (header_len,) = struct.unpack("<Q", raw[8:16])
    header_bytes = raw[16 : 16 + header_len]
    header = json.loads(header_bytes)
    assert header["global_step"] == 5 and header["extra"] == {"a": 1}
    assert raw[16 + header_len : 48 + header_len] == hashlib.sha256(header_bytes).digest()
    assert raw[-32:] == hashlib.sha256(raw[:-32]).digest()
    body = io.BytesIO(raw[48 + header_len : -32])
    prompts = [k for k in header["store"]["prompt_keys"]]
    assert prompts == KEYS
    n = sum(store.buffer_size(k) for k in KEYS)
    sizes = np.frombuffer(body.read(8 * len(prompts)), "<i8")
    assert sizes.tolist() == [store.buffer_size(k) for k in KEYS]
    body.read(8 * n)  # entry_seq
    lengths = np.frombuffer(body.read(8 * n), "<i8")
    steps = np.frombuffer(body.read(8 * n), "<i8")
    rewards = np.frombuffer(body.read(8 * n), "<f8")
    masked = np.frombuffer(body.read(n), "u1")
    expected = [e for k in KEYS for e in store.entries(k)]
    assert lengths.tolist() == [e.response_ids.shape[0] for e in expected]
    assert steps.tolist() == [e.step for e in expected]
    assert rewards.tolist() == [e.reward for e in expected]
    assert masked.tolist() == [int(not e.loss_mask.all()) for e in expected]
    assert header["num_mask_bytes"] == sum((length + 7) // 8 for length, m in zip(lengths, masked) if m)
    for e, length, has_mask in zip(expected, lengths.tolist(), masked.tolist()):
        assert body.read(4 * length) == e.response_ids.astype("<i4").tobytes()
        assert body.read(4 * length) == e.behaviour_log_probs.astype("<f4").tobytes()
        if has_mask:  # token i at bit i % 8 of byte i // 8, written out here
            bits = body.read((length + 7) // 8)
            assert [bool(bits[i // 8] >> (i % 8) & 1) for i in range(length)] == e.loss_mask.tolist()
            assert not any(bits[-1] >> i & 1 for i in range(length - 8 * (len(bits) - 1), 8))  # unused bits 0
    assert body.read() == b""


def test_loaded_entries_own_their_arrays(tmp_path):
    """Loading reads each entry into its own array: no view of a shared buffer keeps evicted entries alive."""
    save_store_state(_filled_store(), tmp_path, 1)
    restored = _empty_store()
    load_store_state(restored, tmp_path)
    for key in KEYS:
        for e in restored.entries(key):
            assert e.response_ids.base is None and e.behaviour_log_probs.base is None
            assert not e.response_ids.flags.writeable and not e.behaviour_log_probs.flags.writeable
            if e.loss_mask_bits is not None:
                assert e.loss_mask_bits.base is None and not e.loss_mask_bits.flags.writeable


@pytest.mark.parametrize("where", ["header", "entry_arrays", "tokens", "final_digest"])
def test_damaged_file_is_an_error_and_leaves_the_store_unchanged(tmp_path, where):
    store = _filled_store()
    path = save_store_state(store, tmp_path, 3)
    raw = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[8:16])
    arrays_at = 48 + header_len
    tokens_at = arrays_at + 8 * store.num_prompts + 41 * store.num_entries
    offset = {
        "header": 20,
        "entry_arrays": arrays_at + 8 * store.num_prompts + 8 * 3,  # inside entry_seq
        "tokens": (tokens_at + len(raw) - 32) // 2,
        "final_digest": len(raw) - 5,
    }[where]
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    target = ReplayStore(max_cache_size=3, min_cache_to_replay=2, max_store_bytes=10_000, seed=7)
    target.insert("old", np.array([1, 2]), np.array([-0.5, -0.5], np.float32), 1.0, 0)
    before = _entries(target, ["old"])
    with pytest.raises(ValueError, match="damaged"):
        load_store_state(target, tmp_path)
    assert _entries(target, ["old"]) == before and target.num_entries == 1


@pytest.mark.parametrize("keep", [100, 20, 17, 0])
def test_truncated_file_is_an_error(tmp_path, keep):
    path = save_store_state(_filled_store(), tmp_path, 3)
    raw = path.read_bytes()
    path.write_bytes(raw[: keep if keep else len(raw) - 1])
    with pytest.raises(ValueError, match="damaged"):
        load_store_state(_empty_store(), tmp_path)


def test_missing_and_wrong_step(tmp_path):
    with pytest.raises(FileNotFoundError, match=STORE_FILENAME):
        load_store_state(_empty_store(), tmp_path)
    save_store_state(_filled_store(), tmp_path, 3)
    with pytest.raises(ValueError, match="step 3"):
        load_store_state(_empty_store(), tmp_path, expected_step=4)


def test_a_store_that_does_not_fit_is_a_clear_error_not_damage(tmp_path):
    save_store_state(_filled_store(), tmp_path, 3)
    with pytest.raises(ValueError, match="max_cache_size=3 but this store has max_cache_size=5") as info:
        load_store_state(ReplayStore(max_cache_size=5, min_cache_to_replay=2), tmp_path)
    assert "damaged" not in str(info.value)


def test_empty_store_round_trip(tmp_path):
    save_store_state(_empty_store(), tmp_path, 1)
    restored = _filled_store()
    load_store_state(restored, tmp_path, expected_step=1)
    assert restored.num_entries == 0 and restored.num_prompts == 0 and restored.nbytes == 0


def _version_1_state(store: ReplayStore) -> dict:
    """The store state of releases before loss masks (state version 1): no entry_masked, no loss_mask_bits."""
    state = {k: v for k, v in store.state_dict().items() if k not in ("entry_masked", "loss_mask_bits")}
    return dict(state, version=1)


def test_version_1_files_of_earlier_releases_are_still_read(tmp_path):
    """The earlier format, written out here as that release did: global_step_N/repo_store.pt, one pickle.
    Those releases never stored a response with masked tokens: every entry loads with an all-ones mask."""
    store = _filled_store(masked=False)
    payload = pickle.dumps(_version_1_state(store), protocol=pickle.HIGHEST_PROTOCOL)
    blob = {"format_version": 1, "global_step": 4, "sha256": hashlib.sha256(payload).hexdigest(), "state": payload}
    (tmp_path / STORE_FILENAME).write_bytes(pickle.dumps(blob))
    restored = _empty_store()
    assert load_store_state(restored, tmp_path, expected_step=4) == {}
    assert _entries(restored) == _entries(store) and restored.stats() == store.stats()
    with pytest.raises(ValueError, match="belongs to step 4"):
        load_store_state(_empty_store(), tmp_path, expected_step=5)
    blob["sha256"] = "0" * 64
    (tmp_path / STORE_FILENAME).write_bytes(pickle.dumps(blob))
    with pytest.raises(ValueError, match="damaged"):
        load_store_state(_empty_store(), tmp_path)


def _write_version_2_file(store: ReplayStore, step_dir, step: int, extra: dict) -> None:
    """The version-2 format of the release before loss masks, written out here from its documentation:
    b"REPOST02" | u64 header length | JSON header | its SHA-256 | prompt_sizes, entry_seq, entry_length,
    step (int64), reward (float64) | per entry ids (int32) then log-probs (float32) | SHA-256 of it all."""
    state = _version_1_state(store)
    lengths = state["entry_length"]
    header = {
        "format_version": 2, "global_step": step, "extra": extra,
        "store": {k: state[k] for k in (
            "format", "version", "max_cache_size", "min_cache_to_replay", "max_store_bytes", "seed", "next_seq",
            "num_inserted", "num_capacity_evictions", "num_byte_evictions", "rng_state", "prompt_keys",
        )},
        "num_entries": int(lengths.shape[0]), "num_tokens": int(lengths.sum()),
    }
    header_bytes = json.dumps(header).encode()
    out = b"REPOST02" + struct.pack("<Q", len(header_bytes)) + header_bytes + hashlib.sha256(header_bytes).digest()
    for name, dtype in (("prompt_sizes", "<i8"), ("entry_seq", "<i8"), ("entry_length", "<i8"), ("step", "<i8"), ("reward", "<f8")):
        out += np.asarray(state[name]).astype(dtype).tobytes()
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for begin, end in zip(offsets[:-1], offsets[1:]):
        out += state["response_ids"][begin:end].astype("<i4").tobytes()
        out += state["behaviour_log_probs"][begin:end].astype("<f4").tobytes()
    out += hashlib.sha256(out).digest()
    store_path(step_dir).parent.mkdir(parents=True, exist_ok=True)
    store_path(step_dir).write_bytes(out)


def test_version_2_files_of_the_release_before_masks_load_with_all_ones_masks(tmp_path):
    store = _filled_store(masked=False)
    _write_version_2_file(store, tmp_path, 6, extra={"k": [1, 2]})
    restored = _filled_store()  # its masked entries are all replaced
    assert load_store_state(restored, tmp_path, expected_step=6) == {"k": [1, 2]}
    assert _entries(restored) == _entries(store) and restored.stats() == store.stats()
    assert restored.num_masked_entries == 0
    assert all(e.loss_mask.all() for k in KEYS for e in restored.entries(k))
    # and a damaged version-2 file is still caught
    raw = bytearray(store_path(tmp_path).read_bytes())
    raw[len(raw) // 2 + 40] ^= 0x01
    store_path(tmp_path).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged"):
        load_store_state(_empty_store(), tmp_path)


def test_a_masked_store_round_trips_with_its_masks_and_bytes(tmp_path):
    store = _filled_store()
    save_store_state(store, tmp_path, 5)
    restored = _empty_store()
    load_store_state(restored, tmp_path, expected_step=5)
    assert _entries(restored) == _entries(store)
    assert restored.num_masked_entries == store.num_masked_entries > 0
    # bytes recomputed from the masks: 8 per token plus ceil(L/8) for a response with a masked token
    expected = sum(
        8 * len(e.loss_mask) + (0 if e.loss_mask.all() else (len(e.loss_mask) + 7) // 8)
        for k in KEYS for e in store.entries(k)
    )
    assert restored.nbytes == store.nbytes == expected
