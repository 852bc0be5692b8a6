"""Saving the replay store with verl's checkpoint, and finding it again on resume.

Layout: ``<trainer.default_local_dir>/global_step_<N>/actor/repo_store.pt``, inside the actor's
checkpoint folder, so that verl's own checkpoint code treats it as part of the actor checkpoint:

- pruning: verl 0.9.1 deletes old checkpoints by deleting their ``actor/`` (and ``critic/``)
  folders, never the ``global_step_<N>/`` folder (utils/checkpoint/checkpoint_manager.py
  ``ensure_checkpoint_capacity`` / ``register_checkpoint``, run by the actor's rank 0 with
  ``trainer.max_actor_ckpt_to_keep``). The store goes with the actor weights it belongs to.
- remote copy: verl copies the actor folder to ``<trainer.default_hdfs_dir>/global_step_<N>/actor``
  where its engine copies at all (the Megatron checkpoint manager's ``_finalize_save``, with
  ``hdfs_io.copy``; the FSDP manager ignores ``hdfs_path``). The store is written before the actor
  is saved, so it is in the folder when that copy runs, and is copied exactly when verl copies.

The file is written to a temporary name, fsynced and renamed (atomic on POSIX), BEFORE verl
saves the actor and writes its tracker file ``latest_checkpointed_iteration.txt`` (verl writes it
last). A process killed while saving therefore leaves the tracker pointing at the previous,
complete checkpoint.

File format (version 3), written and read sequentially without holding a serialised copy::

    b"REPOST03" | header length (u64, little-endian) | header (UTF-8 JSON) | SHA-256 of the header
    | per-entry arrays (prompt_sizes, entry_seq, entry_length, step: int64; reward: float64;
      entry_masked: uint8 0/1)
    | per entry: its token ids (int32), its log-probs (float32), little-endian, and for an entry
      with entry_masked=1 its packed loss mask (ceil(L/8) bytes, ``store.pack_loss_mask``)
    | SHA-256 of every byte before it

The header holds the step, the caller's ``extra`` dict and :meth:`ReplayStore.state_header`. Its
own digest is checked before anything in it is trusted (so the step check cannot be fooled by a
damaged header); the final digest is checked after the last entry is read and before the store is
changed. Saving writes the store's own arrays (no copy); loading reads each entry straight into
the array the store keeps.

Earlier formats are still read. They were written when responses with non-loss tokens (tool
output of a multi-turn agent loop) were never stored, so every entry in them loads with an
all-ones loss mask, which is exactly what was stored: version 2 (``b"REPOST02"``, the layout
above without ``entry_masked`` and mask bytes) and version 1 (one pickle, at
``global_step_<N>/repo_store.pt``, with that format's memory cost of about 3x the payload).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from repo_ext.algorithm.store import ReplayStore

STORE_FILENAME = "repo_store.pt"
STORE_SUBDIR = "actor"
FORMAT_VERSION = 3
_MAGIC = b"REPOST03"
#: version 2: no loss masks (every entry all ones)
_MAGIC_V2 = b"REPOST02"
_LENGTH = struct.Struct("<Q")
_DIGEST_BYTES = hashlib.sha256().digest_size
# name and dtype of each per-entry (per-prompt for prompt_sizes) array, in file order
_ENTRY_ARRAYS = (
    ("prompt_sizes", np.dtype("<i8")),
    ("entry_seq", np.dtype("<i8")),
    ("entry_length", np.dtype("<i8")),
    ("step", np.dtype("<i8")),
    ("reward", np.dtype("<f8")),
    ("entry_masked", np.dtype("u1")),
)
_IDS, _LOG_PROBS, _MASK_BITS = np.dtype("<i4"), np.dtype("<f4"), np.dtype("u1")


def store_path(step_dir: str | os.PathLike) -> Path:
    """Where the store of the checkpoint ``step_dir`` (a ``global_step_<N>`` folder) lives."""
    return Path(step_dir) / STORE_SUBDIR / STORE_FILENAME


#: the setting that says what a resume does with a checkpoint that has no store (RePOConfig)
STORE_ON_RESUME_SETTING = "algorithm.repo.missing_store_on_resume"


def has_store_state(step_dir: str | os.PathLike) -> bool:
    """Whether the checkpoint ``step_dir`` holds a replay store (this format, or version 1's path)."""
    return store_path(step_dir).exists() or (Path(step_dir) / STORE_FILENAME).exists()


def store_on_resume(*, has_store: bool, missing_store_on_resume: str, strategy: str) -> str:
    """What a resume does with the replay store: ``"load"``, ``"empty"`` or ``"refuse"``.

    A checkpoint without a store (e.g. of a GRPO run) is refused unless the user asked for a warm
    start with an empty store (``missing_store_on_resume=empty``), or replay is off
    (``strategy=none``: the store is never read, so there is nothing to lose).
    """
    if has_store:
        return "load"
    if missing_store_on_resume == "empty" or strategy == "none":
        return "empty"
    return "refuse"


def resumed_step_dir(trainer_config: Any, cwd: str | os.PathLike) -> str | None:
    """The ``global_step_<N>`` folder verl will resume from, or None when it starts from scratch.

    Follows verl 0.9.1's ``PPOTrainer._load_checkpoint`` (trainer/ppo/v1/trainer_base.py):
    ``resume_mode=disable`` never resumes; ``auto`` resumes from the step named by the tracker file
    in ``trainer.default_local_dir`` if that folder exists; ``resume_path`` from
    ``trainer.resume_from_path``. Relative paths are relative to ``cwd``.
    """
    # verl's own tracker rules; imported here because they pull in torch and transformers, which
    # the store's users (e.g. the memory benchmark) do not need
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path, get_checkpoint_tracker_filename

    mode = str(trainer_config.get("resume_mode", "auto"))
    if mode == "resume_path":
        path = trainer_config.get("resume_from_path", None)
        return None if path is None else os.path.join(cwd, str(path))  # join keeps an absolute path
    if mode != "auto":
        return None
    root = trainer_config.get("default_local_dir", None)
    if root is None:
        return None
    root = os.path.join(cwd, str(root))
    if not os.path.exists(get_checkpoint_tracker_filename(root)):  # verl would print a note: a fresh start
        return None
    return find_latest_ckpt_path(root)


def save_store_state(
    store: ReplayStore,
    step_dir: str | os.PathLike,
    global_step: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``store`` atomically into the checkpoint ``step_dir``; returns the file's path.

    Args:
        store: the replay store; its arrays are written as they are, one entry after another.
        step_dir: verl's ``global_step_<N>`` folder (the file goes to ``step_dir/actor/``).
        global_step: the checkpoint's step, checked on load.
        extra: small JSON-serialisable values saved with the store (e.g. trainer counters),
            returned by :func:`load_store_state`. Keep it small: it is held in memory as JSON.
    """
    _require_little_endian()
    try:
        extra_json = json.loads(json.dumps(dict(extra or {}), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save_store_state(extra=...) must be a JSON-serialisable dict of finite values: {exc}") from exc
    if extra_json != dict(extra or {}):
        raise ValueError(
            f"save_store_state(extra={extra!r}) would not load back equal: use str keys, lists (not tuples), "
            "and plain int/float/str/bool/None values (JSON-serialisable)"
        )
    arrays = store.state_entry_arrays()
    header = {
        "format_version": FORMAT_VERSION,
        "global_step": int(global_step),
        "extra": extra_json,
        "store": store.state_header(),
        "num_entries": int(arrays["entry_length"].shape[0]),
        "num_tokens": int(arrays["entry_length"].sum()),
        "num_mask_bytes": int(((arrays["entry_length"] + 7) // 8)[arrays["entry_masked"]].sum()),
    }
    header_bytes = json.dumps(header, allow_nan=False).encode()

    final = store_path(step_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{STORE_FILENAME}.tmp-{os.getpid()}"
    with open(tmp, "wb") as raw:
        out = _HashingWriter(raw)
        out.write(_MAGIC)
        out.write(_LENGTH.pack(len(header_bytes)))
        out.write(header_bytes)
        out.write(hashlib.sha256(header_bytes).digest())
        for name, dtype in _ENTRY_ARRAYS:
            out.write(memoryview(arrays[name].astype(dtype, copy=False)))
        for ids, log_probs, mask_bits in store.iter_entry_tokens():
            out.write(memoryview(ids))
            out.write(memoryview(log_probs))
            if mask_bits is not None:
                out.write(memoryview(mask_bits))
        raw.write(out.digest())
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def load_store_state(
    store: ReplayStore, step_dir: str | os.PathLike, expected_step: int | None = None
) -> dict[str, Any]:
    """Read, verify and load the store saved in the checkpoint ``step_dir`` into ``store``.

    ``store`` is changed only when the whole file has been read and verified.

    Returns:
        the ``extra`` dict given to :func:`save_store_state` ({} for a version-1 file).

    Raises:
        FileNotFoundError: no store file (a checkpoint written without RePO).
        ValueError: the file is damaged, of an unknown format, from another step, or does not fit
            ``store`` (e.g. another ``max_cache_size``).
    """
    path = store_path(step_dir)
    legacy = Path(step_dir) / STORE_FILENAME
    if not path.exists() and legacy.exists():
        state, extra = _load_version_1(legacy, expected_step), {}
        store.load_state_dict(state)
        return extra
    if not path.exists():
        raise FileNotFoundError(
            f"RePO replay store not found at {path}: this checkpoint was not written by the RePO trainer. "
            f"Resume from a RePO checkpoint, set {STORE_ON_RESUME_SETTING}=empty to warm-start RePO from it "
            "with an empty store, or start fresh with trainer.resume_mode=disable."
        )
    _require_little_endian()
    size = path.stat().st_size
    with open(path, "rb") as raw:
        src = _HashingReader(raw, path)
        magic = src.read_exact(len(_MAGIC))
        if magic not in (_MAGIC, _MAGIC_V2):
            raise ValueError(
                f"RePO replay store {path} has an unknown format (expected version {FORMAT_VERSION} or 2, "
                f"file starts with {magic!r})"
            )
        with_masks = magic == _MAGIC
        (header_len,) = _LENGTH.unpack(src.read_exact(_LENGTH.size))
        if header_len > size:
            raise ValueError(f"RePO replay store {path} is damaged: header length {header_len} > file size {size}")
        header_bytes = src.read_exact(header_len)
        if src.read_exact(_DIGEST_BYTES) != hashlib.sha256(header_bytes).digest():
            raise ValueError(f"RePO replay store {path} is damaged: its header checksum does not match")
        header = json.loads(header_bytes)
        if expected_step is not None and header["global_step"] != expected_step:
            raise ValueError(
                f"RePO replay store {path} belongs to step {header['global_step']}, "
                f"but the checkpoint is step {expected_step}"
            )
        num_prompts = len(header["store"]["prompt_keys"])
        num_entries, num_tokens = header["num_entries"], header["num_tokens"]
        num_mask_bytes = header["num_mask_bytes"] if with_masks else 0
        expected_size = (
            src.position + 8 * num_prompts + (33 if with_masks else 32) * num_entries + 8 * num_tokens
            + num_mask_bytes + _DIGEST_BYTES
        )
        if size != expected_size:
            raise ValueError(
                f"RePO replay store {path} is damaged: {size} bytes, but its header describes {expected_size}"
            )
        arrays = {
            name: src.read_array(dtype, num_prompts if name == "prompt_sizes" else num_entries)
            for name, dtype in _ENTRY_ARRAYS
            if with_masks or name != "entry_masked"
        }
        lengths = arrays["entry_length"]
        if lengths.shape[0] and (int(lengths.min()) < 0 or int(lengths.sum()) != num_tokens):
            raise ValueError(f"RePO replay store {path} is damaged: entry lengths do not add up to {num_tokens} tokens")
        masked = arrays.pop("entry_masked", np.zeros(num_entries, dtype=np.uint8))
        if masked.shape[0] and (
            int(masked.max()) > 1 or int(((lengths + 7) // 8)[masked == 1].sum()) != num_mask_bytes
        ):
            raise ValueError(f"RePO replay store {path} is damaged: its loss mask flags do not add up to {num_mask_bytes} bytes")
        state = {**header["store"], **arrays, "entry_masked": masked.astype(np.bool_)}
        if not with_masks:  # a version-2 file holds a version-1 store state: no masks
            state.pop("entry_masked")
        try:
            store.load_state_stream(state, _read_tokens(src, lengths.tolist(), masked.tolist(), path))
        except _DamagedFile:
            raise
        except ValueError as exc:
            # the store rejected what it read: a damaged file, or a real mismatch (max_cache_size, ...)
            if not src.rest_matches_digest(size - _DIGEST_BYTES):
                raise _DamagedFile(f"RePO replay store {path} is damaged: its checksum does not match ({exc})") from exc
            raise
    return header["extra"]


def _read_tokens(
    src: _HashingReader, lengths: list[int], masked: list[int], path: Path
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Each entry's (ids, log-probs, packed loss mask or None), read into fresh arrays; the file
    digest is checked after the last."""
    for length, has_mask in zip(lengths, masked, strict=True):
        ids, log_probs = src.read_array(_IDS, length), src.read_array(_LOG_PROBS, length)
        yield ids, log_probs, src.read_array(_MASK_BITS, (length + 7) // 8) if has_mask else None
    if not src.rest_matches_digest(src.position):
        raise _DamagedFile(f"RePO replay store {path} is damaged: its checksum does not match")


class _DamagedFile(ValueError):
    pass


class _HashingWriter:
    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self._hash = raw, hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.raw.write(data)

    def digest(self) -> bytes:
        return self._hash.digest()


class _HashingReader:
    def __init__(self, raw: BinaryIO, path: Path) -> None:
        self.raw, self.path, self.position, self._hash = raw, path, 0, hashlib.sha256()

    def read_exact(self, n: int) -> bytes:
        data = self.raw.read(n)
        self._check(len(data), n)
        self._hash.update(data)
        return data

    def read_array(self, dtype: np.dtype, count: int) -> np.ndarray:
        array = np.empty(count, dtype=dtype)
        view = memoryview(array).cast("B")
        self._check(self.raw.readinto(view) if count else 0, array.nbytes)
        self._hash.update(view)
        return array

    def rest_matches_digest(self, digest_at: int, chunk: int = 1 << 20) -> bool:
        """Hash on up to byte ``digest_at``; True when the digest stored there matches."""
        while self.position < digest_at:
            self.read_exact(min(chunk, digest_at - self.position))
        return self.raw.read(_DIGEST_BYTES) == self._hash.digest()

    def _check(self, got: int, wanted: int) -> None:
        if got != wanted:
            raise _DamagedFile(f"RePO replay store {self.path} is damaged: it ends early (truncated)")
        self.position += got


def _load_version_1(path: Path, expected_step: int | None) -> dict[str, Any]:
    """The pickle format of earlier releases: {format_version: 1, global_step, sha256, state: bytes}."""
    with open(path, "rb") as f:
        try:
            blob = pickle.load(f)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
            raise ValueError(f"RePO replay store {path} is damaged and cannot be read: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format_version") != 1:
        raise ValueError(f"RePO replay store {path} has an unknown format (expected version 1 at this path)")
    payload = blob["state"]
    digest = hashlib.sha256(payload).hexdigest()
    if digest != blob["sha256"]:
        raise ValueError(f"RePO replay store {path} is damaged: checksum {digest} != recorded {blob['sha256']}")
    if expected_step is not None and blob["global_step"] != expected_step:
        raise ValueError(
            f"RePO replay store {path} belongs to step {blob['global_step']}, but the checkpoint is step {expected_step}"
        )
    return pickle.load(io.BytesIO(payload))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise RuntimeError("RePO replay store checkpoints are little-endian; this machine is big-endian")
