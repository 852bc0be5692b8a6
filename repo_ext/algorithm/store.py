"""The RePO replay store: per-prompt FIFO buffers of past responses with their behaviour log-probs.

Example::

    >>> import numpy as np
    >>> store = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    >>> for step, reward in enumerate([0.0, 1.0, 1.0]):
    ...     store.insert("prompt-7", np.array([5, 6, 7]), np.array([-0.1, -0.2, -0.3], np.float32), reward, step)
    >>> [e.step for e in store.retrieve("prompt-7", "recent_k", 2)]
    [1, 2]
    >>> store.nbytes  # 3 entries x (3 int32 ids + 3 float32 log-probs)
    72
    >>> # a tool-calling response: tokens 1-2 are tool output (loss mask 0), stored as 1 bit per token
    >>> store.insert("prompt-8", np.array([5, 6, 7, 8]), np.zeros(4, np.float32), 1.0, 3, loss_mask=[1, 0, 0, 1])
    >>> store.entries("prompt-8")[0].loss_mask.astype(int).tolist()
    [1, 0, 0, 1]
    >>> store.nbytes - 72  # 4 tokens x 8 bytes + 1 byte of mask bits
    33
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from repo_ext.algorithm.loss_mask import is_canonical_mask, mask_nbytes, pack_loss_mask, unpack_loss_mask
from repo_ext.algorithm.retrieval import check_strategy, select_replay_indices

_STATE_FORMAT = "repo_ext.ReplayStore"
#: version 2 added the loss masks (``entry_masked``, ``loss_mask_bits``); version 1 states, written
#: before masked responses could be stored (they were rejected), load with every mask all ones
_STATE_VERSION = 2
_V1_KEYS = frozenset(
    {
        "format", "version", "max_cache_size", "min_cache_to_replay", "max_store_bytes", "seed", "next_seq",
        "num_inserted", "num_capacity_evictions", "num_byte_evictions", "rng_state", "prompt_keys",
        "prompt_sizes", "entry_seq", "entry_length", "reward", "step", "response_ids", "behaviour_log_probs",
    }
)
_STATE_KEYS = _V1_KEYS | {"entry_masked", "loss_mask_bits"}
_TOKEN_KEYS = frozenset({"response_ids", "behaviour_log_probs", "loss_mask_bits"})
_INT32 = np.iinfo(np.int32)

#: bytes every stored token takes: an int32 token id and a float32 behaviour log-prob
BYTES_PER_TOKEN = 8


def entry_nbytes(length: int, masked: bool) -> int:
    """Bytes a stored response of ``length`` tokens counts in :attr:`ReplayStore.nbytes`.

    ``BYTES_PER_TOKEN`` (8) per token; a response with non-loss tokens (``masked``: tool output of a
    multi-turn agent loop) adds its loss mask, one bit per token rounded up to whole bytes. A plain
    response (mask all ones) stores no mask. So 8 bytes per token for a plain response and
    8.125 per token, rounded up to a whole byte, for one with tool tokens.
    """
    return BYTES_PER_TOKEN * length + (mask_nbytes(length) if masked else 0)


@dataclass(frozen=True, eq=False, slots=True)
class ReplayEntry:
    """One stored response.

    Attributes:
        response_ids: (L,) int32 response token ids, no padding; read-only.
        behaviour_log_probs: (L,) float32 per-token log-probs of the policy that generated the
            response, exactly as inserted (after conversion to float32); read-only.
        reward: the response's scalar reward.
        step: the training step the response was generated at.
        loss_mask_bits: None when every token is a loss token (a plain response); otherwise the
            packed loss mask, (ceil(L/8),) uint8 as
            :func:`~repo_ext.algorithm.loss_mask.pack_loss_mask` writes it (0 bits: tokens the loss
            skips, e.g. tool output in a multi-turn response), holding at least one 0 and one 1;
            read-only. Read it through :attr:`loss_mask`.
    """

    response_ids: np.ndarray
    behaviour_log_probs: np.ndarray
    reward: float
    step: int
    loss_mask_bits: np.ndarray | None = None

    def __post_init__(self) -> None:
        ids, log_probs, bits = self.response_ids, self.behaviour_log_probs, self.loss_mask_bits
        if not (isinstance(ids, np.ndarray) and ids.dtype == np.int32 and ids.ndim == 1):
            raise ValueError("ReplayEntry.response_ids must be a 1-D int32 numpy array; use ReplayStore.insert")
        if not (isinstance(log_probs, np.ndarray) and log_probs.dtype == np.float32 and log_probs.shape == ids.shape):
            raise ValueError(
                "ReplayEntry.behaviour_log_probs must be a float32 numpy array of response_ids' length; "
                "use ReplayStore.insert"
            )
        if bits is not None:
            length = ids.shape[0]
            if not (isinstance(bits, np.ndarray) and bits.dtype == np.uint8 and bits.shape == (mask_nbytes(length),)):
                raise ValueError(
                    f"ReplayEntry.loss_mask_bits must be None or a uint8 numpy array of {mask_nbytes(length)} bytes "
                    "(one bit per token); use ReplayStore.insert(..., loss_mask=...)"
                )
            # canonical form, so that byte accounting and equality do not depend on how a mask was built
            if not is_canonical_mask(bits, length):
                raise ValueError(
                    "ReplayEntry.loss_mask_bits must mix loss and non-loss tokens with no bit set past the last "
                    "token (an all-ones mask is stored as None; a response without loss tokens is not stored)"
                )

    @property
    def loss_mask(self) -> np.ndarray:
        """(L,) bool: True on the tokens the loss uses (a fresh array; all True for a plain response)."""
        return unpack_loss_mask(self.loss_mask_bits, self.response_ids.shape[0])

    @property
    def nbytes(self) -> int:
        """Payload bytes: ``response_ids.nbytes + behaviour_log_probs.nbytes`` (8 bytes per token) plus
        ``loss_mask_bits.nbytes`` (ceil(L/8)) for a response with non-loss tokens; see :func:`entry_nbytes`."""
        extra = 0 if self.loss_mask_bits is None else self.loss_mask_bits.nbytes
        return self.response_ids.nbytes + self.behaviour_log_probs.nbytes + extra


class ReplayStore:
    """Per-prompt FIFO replay buffers with a retrieval gate and an optional global byte cap.

    Args:
        max_cache_size: per-prompt capacity; inserting into a full buffer evicts its oldest entry.
        min_cache_to_replay: the gate: :meth:`retrieve` returns nothing for a prompt holding fewer
            entries. 1 <= min_cache_to_replay <= max_cache_size.
        max_store_bytes: cap on :attr:`nbytes`, or None for no cap. When an insert takes
            :attr:`nbytes` above the cap, entries are evicted in global insertion order, the
            oldest inserted entry of the whole store first (whatever its prompt), until
            ``nbytes <= max_store_bytes``. An entry larger than the cap on its own is rejected.
        seed: seed of the generator that ``random_k`` draws from (non-negative int).

    Entries: response token ids (stored as int32, no padding), behaviour log-probs (stored as
    float32, returned bit for bit), a reward, the step the response was generated at, and the
    response's loss mask (which tokens the loss uses: a multi-turn response's tool output is
    not). A zero-length response is accepted: it carries no token for the loss, but its reward
    still counts in its replay group's statistics. A non-empty response whose loss mask is all
    zero is rejected (it has nothing to train on).

    Byte accounting: :attr:`nbytes` is exactly the sum over stored entries of
    :attr:`ReplayEntry.nbytes`: 8 bytes per stored token (int32 id + float32 log-prob), plus, for
    a response with non-loss tokens only, its loss mask at one bit per token rounded up to whole
    bytes (:func:`entry_nbytes`). A plain response stores no mask. Python object overhead (roughly
    0.5 kB per entry) is not counted.

    Cost: :meth:`insert` is amortised O(L + number of evictions), each eviction O(1);
    :meth:`retrieve` is a dict lookup plus work on that prompt's buffer only, so neither grows
    with the number of prompts in the store. A prompt whose buffer empties is removed.
    """

    def __init__(
        self,
        max_cache_size: int,
        min_cache_to_replay: int,
        max_store_bytes: int | None = None,
        seed: int = 0,
    ) -> None:
        _require_int("max_cache_size", max_cache_size, low=1)
        _require_int("min_cache_to_replay", min_cache_to_replay, low=1, high=max_cache_size)
        if max_store_bytes is not None:
            _require_int("max_store_bytes", max_store_bytes, low=1, hint="or None for no cap")
        _require_int("seed", seed, low=0)
        self.max_cache_size = int(max_cache_size)
        self.min_cache_to_replay = int(min_cache_to_replay)
        self.max_store_bytes = None if max_store_bytes is None else int(max_store_bytes)
        self.seed = int(seed)
        self._reset()
        self._rng = np.random.default_rng(self.seed)

    def _reset(self) -> None:
        # prompt key -> deque of (insertion number, entry), oldest first
        self._buffers: dict[str, deque[tuple[int, ReplayEntry]]] = {}
        # (insertion number, prompt key) in insertion order; entries already evicted by the
        # per-prompt capacity stay here until popped or compacted ("stale")
        self._order: deque[tuple[int, str]] = deque()
        self._num_stale = 0
        self._next_seq = 0
        self._num_entries = 0
        self._nbytes = 0
        self._num_masked = 0
        self._num_replayable = 0
        self._num_inserted = 0
        self._num_capacity_evictions = 0
        self._num_byte_evictions = 0

    # ------------------------------------------------------------------ insert / retrieve

    def insert(
        self,
        prompt_key: str,
        response_ids: Any,
        behaviour_log_probs: Any,
        reward: float,
        step: int,
        loss_mask: Any = None,
    ) -> None:
        """Store one response of ``prompt_key``; evict per the capacity and the byte cap.

        Args:
            prompt_key: stable identity of the prompt (e.g. a dataset index or a prompt hash).
            response_ids: (L,) integer token ids without padding (numpy array, list, CPU tensor).
            behaviour_log_probs: (L,) float per-token log-probs at generation time; must be finite
                (on non-loss tokens too: give any finite value there, it is never used by the loss).
            reward: finite scalar reward.
            step: training step the response was generated at, >= 0.
            loss_mask: (L,) 0/1 or bool, 1 on the tokens the loss uses (verl's ``response_mask``);
                None means all ones. Must hold at least one 1 when L > 0.
        """
        if not isinstance(prompt_key, str):
            raise ValueError(f"prompt_key must be a str (a stable prompt identity), got {type(prompt_key).__name__}")
        entry = _make_entry(response_ids, behaviour_log_probs, reward, step, loss_mask=loss_mask)
        if self.max_store_bytes is not None and entry.nbytes > self.max_store_bytes:
            raise ValueError(
                f"a response of {entry.response_ids.shape[0]} tokens needs {entry.nbytes} bytes, more than "
                f"max_store_bytes={self.max_store_bytes}; raise max_store_bytes"
            )
        seq = self._next_seq
        self._next_seq += 1
        buffer = self._buffers.get(prompt_key)
        if buffer is None:
            buffer = self._buffers[prompt_key] = deque()
        buffer.append((seq, entry))
        self._order.append((seq, prompt_key))
        self._num_entries += 1
        self._nbytes += entry.nbytes
        self._num_masked += entry.loss_mask_bits is not None
        self._num_inserted += 1
        if len(buffer) == self.min_cache_to_replay:
            self._num_replayable += 1
        if len(buffer) > self.max_cache_size:
            self._evict_oldest_of(prompt_key)
            self._num_capacity_evictions += 1
            self._num_stale += 1
        if self.max_store_bytes is not None:
            while self._nbytes > self.max_store_bytes:
                seq_old, key_old = self._order.popleft()
                head = self._buffers.get(key_old)
                if head is not None and head[0][0] == seq_old:
                    self._evict_oldest_of(key_old)
                    self._num_byte_evictions += 1
                else:
                    self._num_stale -= 1
        if self._num_stale > max(1024, self._num_entries):
            self._compact_order()

    def retrieve(self, prompt_key: str, strategy: str, k: int) -> list[ReplayEntry]:
        """Past responses of ``prompt_key`` to replay this step.

        Applies the gate (nothing when the prompt holds fewer than ``min_cache_to_replay``
        entries), then selects ``min(len(buffer), k)`` entries with ``strategy`` (the whole buffer
        for ``all``, nothing for ``none``); see :func:`~repo_ext.algorithm.retrieval.select_replay_indices`.

        Returns:
            the selected entries in FIFO order (oldest first); [] for an unknown prompt.
        """
        check_strategy(strategy)
        buffer = self._buffers.get(prompt_key)
        if buffer is None or len(buffer) < self.min_cache_to_replay or strategy == "none":
            return []
        entries = [entry for _, entry in buffer]
        rewards = np.fromiter((entry.reward for entry in entries), dtype=np.float64, count=len(entries))
        indices = select_replay_indices(strategy, rewards, k, self._rng)
        return [entries[i] for i in indices.tolist()]

    def entries(self, prompt_key: str) -> list[ReplayEntry]:
        """All entries of ``prompt_key`` in FIFO order (oldest first); [] for an unknown prompt."""
        return [entry for _, entry in self._buffers.get(prompt_key, ())]

    def buffer_size(self, prompt_key: str) -> int:
        """Number of entries ``prompt_key`` holds (0 for an unknown prompt)."""
        buffer = self._buffers.get(prompt_key)
        return 0 if buffer is None else len(buffer)

    def __contains__(self, prompt_key: object) -> bool:
        return prompt_key in self._buffers

    # ------------------------------------------------------------------ sizes and counters

    @property
    def num_prompts(self) -> int:
        """Prompts with at least one stored entry."""
        return len(self._buffers)

    @property
    def num_entries(self) -> int:
        """Stored entries over all prompts."""
        return self._num_entries

    @property
    def nbytes(self) -> int:
        """Exact payload bytes: the sum of :attr:`ReplayEntry.nbytes` over all entries (ids, log-probs,
        and the packed loss masks of responses with non-loss tokens)."""
        return self._nbytes

    @property
    def num_masked_entries(self) -> int:
        """Stored entries whose loss mask has non-loss tokens (e.g. tool output of a multi-turn response)."""
        return self._num_masked

    @property
    def num_capacity_evictions(self) -> int:
        """Entries evicted because their prompt's buffer was full."""
        return self._num_capacity_evictions

    @property
    def num_byte_evictions(self) -> int:
        """Entries evicted because the store exceeded ``max_store_bytes``."""
        return self._num_byte_evictions

    @property
    def num_evictions(self) -> int:
        """All evicted entries: capacity plus byte-cap evictions."""
        return self._num_capacity_evictions + self._num_byte_evictions

    @property
    def num_inserted(self) -> int:
        """Entries ever inserted."""
        return self._num_inserted

    @property
    def num_replayable_prompts(self) -> int:
        """Prompts that pass the gate (hold at least ``min_cache_to_replay`` entries)."""
        return self._num_replayable

    def stats(self) -> dict[str, int]:
        """Sizes and counters, e.g. for logging (all ints; ``max_store_bytes`` is -1 when uncapped)."""
        return {
            "num_prompts": self.num_prompts,
            "num_replayable_prompts": self._num_replayable,
            "num_entries": self._num_entries,
            "num_masked_entries": self._num_masked,
            "nbytes": self._nbytes,
            "max_store_bytes": -1 if self.max_store_bytes is None else self.max_store_bytes,
            "num_inserted": self._num_inserted,
            "num_evictions": self.num_evictions,
            "num_capacity_evictions": self._num_capacity_evictions,
            "num_byte_evictions": self._num_byte_evictions,
        }

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """The whole store as plain Python and numpy values (picklable; ``torch.save``-able).

        Entries are stored flat: prompts in the store's order, each prompt's entries oldest first;
        token ids and log-probs concatenated into one int32 and one float32 array, and the packed
        loss masks of the entries flagged in ``entry_masked`` into one uint8 array
        (``loss_mask_bits``, ceil(L/8) bytes per such entry). Loading it into
        a store with the same ``max_cache_size`` restores entries, their order, counters, the
        insertion counter and the ``random_k`` generator exactly. (``torch.load`` needs
        ``weights_only=False`` for the numpy arrays.) The concatenation copies the whole payload;
        to write a checkpoint without that copy use :meth:`state_header`, :meth:`state_entry_arrays`
        and :meth:`iter_entry_tokens` (what ``store_checkpoint`` does).
        """
        tokens = list(self.iter_entry_tokens())
        return {
            **self.state_header(),
            **self.state_entry_arrays(),
            "response_ids": _concat([ids for ids, _, _ in tokens], np.int32),
            "behaviour_log_probs": _concat([log_probs for _, log_probs, _ in tokens], np.float32),
            "loss_mask_bits": _concat([bits for _, _, bits in tokens if bits is not None], np.uint8),
        }

    def state_header(self) -> dict[str, Any]:
        """The part of :meth:`state_dict` that is neither per entry nor per token: ints, strings,
        None, lists and dicts only (JSON-serialisable; the generator state holds 128-bit ints)."""
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "max_cache_size": self.max_cache_size,
            "min_cache_to_replay": self.min_cache_to_replay,
            "max_store_bytes": self.max_store_bytes,
            "seed": self.seed,
            "next_seq": self._next_seq,
            "num_inserted": self._num_inserted,
            "num_capacity_evictions": self._num_capacity_evictions,
            "num_byte_evictions": self._num_byte_evictions,
            "rng_state": self._rng.bit_generator.state,
            "prompt_keys": list(self._buffers),
        }

    def state_entry_arrays(self) -> dict[str, np.ndarray]:
        """The per-prompt and per-entry arrays of :meth:`state_dict` (41 bytes per entry), in state order.

        ``prompt_sizes`` (P,) int64; ``entry_seq``, ``entry_length``, ``step`` (E,) int64;
        ``reward`` (E,) float64; ``entry_masked`` (E,) bool (the entry has a packed loss mask).
        State order: prompts as in :meth:`state_header`'s ``prompt_keys``, each prompt's entries
        oldest first.
        """
        buffers = self._buffers.values()
        slots = [slot for buffer in buffers for slot in buffer]
        return {
            "prompt_sizes": np.array([len(buffer) for buffer in buffers], dtype=np.int64),
            "entry_seq": np.array([seq for seq, _ in slots], dtype=np.int64),
            "entry_length": np.array([e.response_ids.shape[0] for _, e in slots], dtype=np.int64),
            "reward": np.array([e.reward for _, e in slots], dtype=np.float64),
            "step": np.array([e.step for _, e in slots], dtype=np.int64),
            "entry_masked": np.array([e.loss_mask_bits is not None for _, e in slots], dtype=np.bool_),
        }

    def iter_entry_tokens(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """``(response_ids, behaviour_log_probs, loss_mask_bits)`` of every entry in state order: the
        stored, read-only arrays themselves ((L,) int32, (L,) float32, and (ceil(L/8),) uint8 or None
        for an all-ones mask), not copies."""
        for buffer in self._buffers.values():
            for _, entry in buffer:
                yield entry.response_ids, entry.behaviour_log_probs, entry.loss_mask_bits

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the store's contents with ``state`` (from :meth:`state_dict`).

        Raises ValueError when ``state`` is not a store state, was saved with another
        ``max_cache_size``, or holds more bytes than this store's ``max_store_bytes``. A different
        ``min_cache_to_replay`` or ``seed`` is accepted: the gate applies from now on, and
        ``random_k`` continues from the saved generator state. A version-1 state (written before
        loss masks were stored, when responses with non-loss tokens were never stored) loads with
        every loss mask all ones.
        """
        version = _check_state_keys(state, with_tokens=True)
        ids = np.asarray(state["response_ids"])
        log_probs = np.asarray(state["behaviour_log_probs"])
        lengths = np.asarray(state["entry_length"])
        if (
            ids.dtype != np.int32
            or log_probs.dtype != np.float32
            or lengths.ndim != 1
            or ids.shape != (int(lengths.sum()),)
            or log_probs.shape != ids.shape
        ):
            raise ValueError("corrupt ReplayStore state: its token arrays do not match entry_length")
        masked = _entry_masked(state, version, lengths.shape[0])
        mask_sizes = np.where(masked, (lengths + 7) // 8, 0)
        bits = np.asarray(state["loss_mask_bits"]) if version >= 2 else np.empty(0, np.uint8)
        if bits.dtype != np.uint8 or bits.shape != (int(mask_sizes.sum()),):
            raise ValueError("corrupt ReplayStore state: loss_mask_bits do not match entry_masked and entry_length")
        offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        mask_offsets = np.concatenate([[0], np.cumsum(mask_sizes)]).tolist()
        tokens = (
            (
                ids[offsets[i] : offsets[i + 1]].copy(),
                log_probs[offsets[i] : offsets[i + 1]].copy(),
                bits[mask_offsets[i] : mask_offsets[i + 1]].copy() if masked[i] else None,
            )
            for i in range(lengths.shape[0])
        )
        self.load_state_stream(state, tokens)

    def load_state_stream(
        self, state: Mapping[str, Any], tokens: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]]
    ) -> None:
        """Replace the store's contents, taking each entry's token arrays from ``tokens``.

        Args:
            state: the keys of :meth:`state_header` and :meth:`state_entry_arrays` (extra keys are
                ignored; a version-1 state has no ``entry_masked``: every mask is all ones).
            tokens: ``(response_ids, behaviour_log_probs, loss_mask_bits)`` per entry in state order,
                as :meth:`iter_entry_tokens` yields them: fresh (L,) int32 and (L,) float32 numpy
                arrays, and a fresh (ceil(L/8),) uint8 array exactly for the entries flagged in
                ``entry_masked`` (None for the others), that the store takes over without copying
                (it makes them read-only), L being that entry's ``entry_length``. The store consumes
                ``tokens`` to its end before it changes anything, so an exception raised by
                ``tokens`` (e.g. a checksum found wrong after the last entry) leaves the store as it was.

        Raises ValueError like :meth:`load_state_dict`, and when ``tokens`` yields a different
        number of entries or arrays of another dtype or length.
        """
        version = _check_state_keys(state, with_tokens=False)
        if state["max_cache_size"] != self.max_cache_size:
            raise ValueError(
                f"the checkpointed store has max_cache_size={state['max_cache_size']} but this store has "
                f"max_cache_size={self.max_cache_size}; resume with the same algorithm.repo.max_cache_size"
            )
        prompt_keys = list(state["prompt_keys"])
        sizes = np.asarray(state["prompt_sizes"])
        seqs = np.asarray(state["entry_seq"])
        lengths = np.asarray(state["entry_length"])
        rewards = np.asarray(state["reward"])
        steps = np.asarray(state["step"])
        num_entries = int(sizes.sum())
        masked = _entry_masked(state, version, num_entries)
        if (
            sizes.ndim != 1
            or len(prompt_keys) != sizes.shape[0]
            or len(set(prompt_keys)) != len(prompt_keys)
            or not all(isinstance(key, str) for key in prompt_keys)
            or np.any(sizes < 1)
            or np.any(sizes > self.max_cache_size)
            or any(a.shape != (num_entries,) for a in (seqs, lengths, rewards, steps))
            or np.any(lengths < 0)
            or np.unique(seqs).shape[0] != num_entries
            or (num_entries and int(seqs.max()) >= int(state["next_seq"]))
        ):
            raise ValueError("corrupt ReplayStore state: its entry arrays are inconsistent with each other")
        total_bytes = BYTES_PER_TOKEN * int(lengths.sum()) + int(np.where(masked, (lengths + 7) // 8, 0).sum())
        if self.max_store_bytes is not None and total_bytes > self.max_store_bytes:
            raise ValueError(
                f"the checkpointed store holds {total_bytes} bytes, more than max_store_bytes={self.max_store_bytes}; "
                "resume with a larger algorithm.repo.max_store_bytes"
            )
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng_state"]

        token_iter = iter(tokens)
        buffers: dict[str, deque[tuple[int, ReplayEntry]]] = {}
        row = 0
        for key, size in zip(prompt_keys, sizes.tolist()):
            buffer = buffers[key] = deque()
            for i in range(row, row + size):
                if buffer and buffer[-1][0] >= seqs[i]:
                    raise ValueError(f"corrupt ReplayStore state: prompt {key!r} entries are not in insertion order")
                arrays = next(token_iter, None)
                if arrays is None:
                    raise ValueError(f"corrupt ReplayStore state: token arrays end at entry {i} of {num_entries}")
                ids, log_probs, bits = arrays
                if not (
                    isinstance(ids, np.ndarray) and ids.dtype == np.int32 and ids.shape == (int(lengths[i]),)
                    and isinstance(log_probs, np.ndarray) and log_probs.dtype == np.float32
                    and log_probs.shape == ids.shape
                    and (bits is not None) == bool(masked[i])
                ):
                    raise ValueError(
                        f"corrupt ReplayStore state: entry {i} needs {int(lengths[i])} int32 token ids and float32 "
                        f"log-probs{' and its loss mask bits' if masked[i] else ' and no loss mask'}"
                    )
                entry = _make_entry(ids, log_probs, rewards[i], steps[i], loss_mask_bits=bits, copy=False)
                buffer.append((int(seqs[i]), entry))
            row += size
        if next(token_iter, None) is not None:
            raise ValueError(f"corrupt ReplayStore state: more token arrays than its {num_entries} entries")
        prompt_of_entry = np.repeat(np.arange(len(prompt_keys)), sizes)

        self._reset()
        self._rng = rng
        self._buffers = buffers
        self._order.extend(
            (int(seqs[i]), prompt_keys[prompt_of_entry[i]]) for i in np.argsort(seqs, kind="stable").tolist()
        )
        self._next_seq = int(state["next_seq"])
        self._num_entries = num_entries
        self._nbytes = total_bytes
        self._num_masked = int(np.count_nonzero(masked))
        self._num_replayable = int(np.count_nonzero(sizes >= self.min_cache_to_replay))
        self._num_inserted = int(state["num_inserted"])
        self._num_capacity_evictions = int(state["num_capacity_evictions"])
        self._num_byte_evictions = int(state["num_byte_evictions"])

    # ------------------------------------------------------------------ internals

    def _evict_oldest_of(self, prompt_key: str) -> None:
        buffer = self._buffers[prompt_key]
        if len(buffer) == self.min_cache_to_replay:
            self._num_replayable -= 1
        _, entry = buffer.popleft()
        self._num_entries -= 1
        self._nbytes -= entry.nbytes
        self._num_masked -= entry.loss_mask_bits is not None
        if not buffer:
            del self._buffers[prompt_key]

    def _compact_order(self) -> None:
        """Drop entries of ``_order`` already evicted by capacity (amortised O(1) per eviction).

        A prompt's buffer always holds a contiguous run of its newest insertions, so an order
        item is live exactly when its insertion number is >= that of its prompt's oldest entry.
        """
        buffers = self._buffers
        self._order = deque(
            (seq, key) for seq, key in self._order if key in buffers and seq >= buffers[key][0][0]
        )
        self._num_stale = 0


def _make_entry(
    response_ids: Any,
    behaviour_log_probs: Any,
    reward: Any,
    step: Any,
    *,
    loss_mask: Any = None,
    loss_mask_bits: np.ndarray | None = None,
    copy: bool = True,
) -> ReplayEntry:
    """Validate one response and copy it into a compact, read-only :class:`ReplayEntry`.

    The loss mask comes either unpacked (``loss_mask``, (L,) 0/1 or bool; None: all ones) or
    already packed (``loss_mask_bits``, from a checkpoint). With ``copy=False`` int32/float32/uint8
    arrays are taken over as they are (made read-only), for arrays the store itself just allocated
    (a checkpoint being loaded).
    """
    ids = np.asarray(response_ids)
    log_probs = np.asarray(behaviour_log_probs)
    if ids.ndim != 1:
        raise ValueError(f"response_ids must be 1-D (one response, no padding), got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"response_ids must be integer token ids, got dtype {ids.dtype}")
    out_of_range = ids.size and not np.can_cast(ids.dtype, np.int32)
    if out_of_range and (int(ids.min()) < _INT32.min or int(ids.max()) > _INT32.max):
        raise ValueError(f"response_ids must fit in int32, got values in [{ids.min()}, {ids.max()}]")
    if log_probs.ndim != 1 or log_probs.shape != ids.shape:
        raise ValueError(
            f"behaviour_log_probs must be 1-D with one value per token: shape {log_probs.shape} "
            f"does not match response_ids {ids.shape}"
        )
    if log_probs.dtype.kind != "f":
        raise ValueError(f"behaviour_log_probs must be floating point, got dtype {log_probs.dtype}")
    # by default a copy, never a view of the caller's array
    log_probs = np.array(log_probs, dtype=np.float32) if copy else np.asarray(log_probs, dtype=np.float32)
    if not np.isfinite(log_probs).all():
        bad = int(np.flatnonzero(~np.isfinite(log_probs))[0])
        raise ValueError(f"behaviour_log_probs must be finite, got {log_probs[bad]} at token {bad}")
    try:
        reward = float(reward)
    except (TypeError, ValueError):
        raise ValueError(f"reward must be a finite number, got {reward!r}") from None
    if not math.isfinite(reward):
        raise ValueError(f"reward must be a finite number, got {reward!r}")
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be an integer >= 0 (the training step), got {step!r}")
    if loss_mask is not None:
        if loss_mask_bits is not None:
            raise ValueError("give the loss mask once: loss_mask or loss_mask_bits")
        if np.shape(loss_mask) != ids.shape:
            raise ValueError(
                f"loss_mask must have one flag per token: shape {np.shape(loss_mask)} does not match response_ids {ids.shape}"
            )
        mask = np.asarray(loss_mask)
        if ids.size and not mask.any():
            raise ValueError(
                "loss_mask is all zero: this response has no token for the loss (e.g. only tool output) and cannot "
                "be replayed"
            )
        loss_mask_bits = pack_loss_mask(mask)
    elif loss_mask_bits is not None:
        loss_mask_bits = np.array(loss_mask_bits, dtype=np.uint8) if copy else loss_mask_bits
    ids = np.array(ids, dtype=np.int32) if copy else np.asarray(ids, dtype=np.int32)
    ids.flags.writeable = False
    log_probs.flags.writeable = False
    if loss_mask_bits is not None:
        loss_mask_bits.flags.writeable = False
    return ReplayEntry(ids, log_probs, reward, int(step), loss_mask_bits)


def _check_state_keys(state: Any, *, with_tokens: bool) -> int:
    """The state's version (1 or 2), after checking it has every key that version needs."""
    if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
        raise ValueError(f"not a ReplayStore state (expected format {_STATE_FORMAT!r})")
    version = state.get("version")
    if version not in (1, _STATE_VERSION):
        raise ValueError(f"ReplayStore state version {version!r} is unsupported (expected 1 or {_STATE_VERSION})")
    required = _V1_KEYS if version == 1 else _STATE_KEYS
    if not with_tokens:
        required = required - _TOKEN_KEYS
    missing = sorted(required - set(state))
    if missing:
        raise ValueError(f"corrupt ReplayStore state: missing {', '.join(missing)}")
    return int(version)


def _entry_masked(state: Mapping[str, Any], version: int, num_entries: int) -> np.ndarray:
    """(E,) bool: which entries carry packed loss mask bits (none in a version-1 state)."""
    if version == 1:
        return np.zeros(num_entries, dtype=np.bool_)
    masked = np.asarray(state["entry_masked"])
    if masked.shape != (num_entries,) or masked.dtype != np.bool_:
        raise ValueError(f"corrupt ReplayStore state: entry_masked must be {num_entries} bools")
    return masked


def _concat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype=dtype)


def _require_int(name: str, value: Any, *, low: int, high: int | None = None, hint: str = "") -> None:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        valid = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name}={value!r} is invalid; it must be {valid}{' ' + hint if hint else ''}")
