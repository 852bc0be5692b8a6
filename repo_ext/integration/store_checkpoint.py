"""Saving the replay store next to verl's checkpoint, and finding it again on resume.

Layout: ``<trainer.default_local_dir>/global_step_<N>/repo_store.pt``. The file is written to a
temporary name and renamed (atomic on POSIX), BEFORE verl writes its tracker file
``latest_checkpointed_iteration.txt`` (verl/trainer/ppo/v1/trainer_base.py ``_save_checkpoint``
writes the tracker last). A process killed while saving therefore leaves the tracker pointing at
the previous, complete checkpoint. The payload carries a SHA-256 of the store's serialised state,
checked on load, so a damaged file is an error rather than a silently different buffer.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

STORE_FILENAME = "repo_store.pt"
FORMAT_VERSION = 1


def save_store_state(state: dict[str, Any], step_dir: str | os.PathLike, global_step: int) -> Path:
    """Write ``state`` (``ReplayStore.state_dict()``) atomically into ``step_dir``; returns the path."""
    step_dir = Path(step_dir)
    step_dir.mkdir(parents=True, exist_ok=True)
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    blob = {
        "format_version": FORMAT_VERSION,
        "global_step": int(global_step),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "state": payload,
    }
    final = step_dir / STORE_FILENAME
    tmp = step_dir / f".{STORE_FILENAME}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(blob, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def load_store_state(step_dir: str | os.PathLike, expected_step: int | None = None) -> dict[str, Any]:
    """Read and verify the store state saved in ``step_dir``.

    Raises:
        FileNotFoundError: no store file (a checkpoint written without RePO, or by an older run).
        ValueError: the file is damaged, of an unknown format, or from another step.
    """
    path = Path(step_dir) / STORE_FILENAME
    if not path.exists():
        raise FileNotFoundError(
            f"RePO replay store not found at {path}: this checkpoint was not written by the RePO trainer. "
            "Resume from a RePO checkpoint, or start fresh with trainer.resume_mode=disable."
        )
    with open(path, "rb") as f:
        try:
            blob = pickle.load(f)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
            raise ValueError(f"RePO replay store {path} is damaged and cannot be read: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"RePO replay store {path} has an unknown format (expected version {FORMAT_VERSION})")
    payload = blob["state"]
    digest = hashlib.sha256(payload).hexdigest()
    if digest != blob["sha256"]:
        raise ValueError(f"RePO replay store {path} is damaged: checksum {digest} != recorded {blob['sha256']}")
    if expected_step is not None and blob["global_step"] != expected_step:
        raise ValueError(
            f"RePO replay store {path} belongs to step {blob['global_step']}, but the checkpoint is step {expected_step}"
        )
    return pickle.load(io.BytesIO(payload))
