"""Resume after a crash, through verl's own ``_load_checkpoint`` and the RePO trainer's override.

The checkpoint folders are what a killed run leaves behind: verl writes ``global_step_N/`` (the
RePO store into ``actor/`` first, then the actor, then data.pt) and only then its tracker file
``latest_checkpointed_iteration.txt``. Only the actor worker group and the dataloader are stand-ins
(recording what verl asks them to load); finding the checkpoint, the step counter and the store
restore are the real code. The end-to-end version with real processes killed by SIGKILL is
``test_fault_injection_e2e.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from repo_ext.algorithm.config import RePOConfig
from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.store_checkpoint import STORE_FILENAME, save_store_state, store_path
from repo_ext.integration.trainer import RePOTrainer

TRACKER = "latest_checkpointed_iteration.txt"


def _store_after(steps: int) -> ReplayStore:
    """The store a run holds after ``steps`` steps of 3 prompts x 2 responses (deterministic)."""
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=2, max_store_bytes=10_000, seed=3)
    rng = np.random.default_rng(0)
    for step in range(1, steps + 1):
        for p in range(3):
            for _ in range(2):
                n = int(rng.integers(1, 7))
                store.insert(f"p{p}", rng.integers(0, 50, n), -rng.random(n).astype(np.float32), float(rng.integers(0, 2)), step)
    return store


def _complete_checkpoint(root: Path, step: int) -> None:
    folder = root / f"global_step_{step}"
    save_store_state(_store_after(step), folder, step)
    (folder / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"weights")
    torch.save({"epoch": step}, folder / "data.pt")
    (root / TRACKER).write_text(str(step))


class _Recorder:
    def __init__(self):
        self.loaded = []

    def load_checkpoint(self, local_path, del_local_after_load=False):
        self.loaded.append(local_path)

    def load_state_dict(self, state):
        self.loaded.append(state)


def _resume(root: Path) -> RePOTrainer:
    trainer = RePOTrainer.__new__(RePOTrainer)  # no workers, no Ray: only what _load_checkpoint reads
    trainer.config = OmegaConf.create(
        {"trainer": {"resume_mode": "auto", "default_local_dir": str(root), "resume_from_path": None,
                     "del_local_ckpt_after_load": False}}
    )
    trainer.actor_rollout_wg = _Recorder()
    trainer.train_dataloader = _Recorder()
    trainer.use_critic = False
    trainer.trainer_mode = "sync"
    trainer.replay_store = ReplayStore(max_cache_size=4, min_cache_to_replay=2, max_store_bytes=10_000, seed=3)
    trainer.repo_config = RePOConfig(min_cache_to_replay=2, max_cache_size=4, num_replays=2)
    trainer._load_checkpoint()
    return trainer


def _same_store(a: ReplayStore, b: ReplayStore) -> bool:
    def content(s):
        return {k: [(e.response_ids.tobytes(), e.behaviour_log_probs.tobytes(), e.reward, e.step) for e in s.entries(k)]
                for k in ("p0", "p1", "p2")}

    return a.stats() == b.stats() and content(a) == content(b)


def test_resume_uses_the_last_complete_checkpoint(tmp_path):
    _complete_checkpoint(tmp_path, 1)
    _complete_checkpoint(tmp_path, 2)
    trainer = _resume(tmp_path)
    assert trainer.global_steps == 2
    assert trainer.actor_rollout_wg.loaded == [str(tmp_path / "global_step_2" / "actor")]
    assert trainer.train_dataloader.loaded == [{"epoch": 2}]
    assert _same_store(trainer.replay_store, _store_after(2))
    assert not _same_store(trainer.replay_store, _store_after(1))


@pytest.mark.parametrize("damage", ["partial_store", "temp_file_only", "no_store", "partial_actor_only"])
def test_killed_while_saving_resumes_from_the_previous_checkpoint(tmp_path, damage):
    """Killed during step 3's save: global_step_3/ is incomplete and the tracker still says 2."""
    _complete_checkpoint(tmp_path, 2)
    folder = tmp_path / "global_step_3"
    folder.mkdir()
    if damage == "partial_store":
        path = save_store_state(_store_after(3), folder, 3)
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "temp_file_only":  # killed inside save_store_state, before its rename
        (folder / "actor").mkdir()
        (folder / "actor" / f".{STORE_FILENAME}.tmp-4242").write_bytes(b"REPOST02partial")
    elif damage == "partial_actor_only":  # store written, killed while the actor was being saved
        save_store_state(_store_after(3), folder, 3)
    trainer = _resume(tmp_path)
    assert trainer.global_steps == 2
    assert trainer.actor_rollout_wg.loaded == [str(tmp_path / "global_step_2" / "actor")]
    assert _same_store(trainer.replay_store, _store_after(2))


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        ("bit_flip", ValueError, "damaged"),
        ("truncated", ValueError, "damaged"),
        ("missing", FileNotFoundError, "not written by the RePO trainer"),
        ("other_step", ValueError, "belongs to step 2"),
    ],
)
def test_tracker_pointing_at_a_damaged_store_is_a_clear_error(tmp_path, damage, error, match):
    _complete_checkpoint(tmp_path, 2)
    _complete_checkpoint(tmp_path, 3)
    path = store_path(tmp_path / "global_step_3")
    raw = bytearray(path.read_bytes())
    if damage == "bit_flip":
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
    elif damage == "truncated":
        path.write_bytes(bytes(raw[: len(raw) // 3]))
    elif damage == "missing":
        path.unlink()
    elif damage == "other_step":
        path.write_bytes(store_path(tmp_path / "global_step_2").read_bytes())
    with pytest.raises(error, match=match) as info:
        _resume(tmp_path)
    assert "global_step_3" in str(info.value)  # names the file
