"""The store's checkpoint files are pruned and copied exactly as verl prunes and copies the actor's.

``RePOTrainer._save_checkpoint`` and verl's ``_save_checkpoint`` (trainer_base.py) run for real.
Only the actor worker group is a stand-in, and it runs verl's own code where the real one does:
its rank 0's retention (``BaseCheckpointManager.ensure_checkpoint_capacity`` before writing,
``register_checkpoint`` after, as both the FSDP and the Megatron checkpoint managers do) and, when
given an ``hdfs_path``, the Megatron manager's remote copy (``hdfs_io.makedirs`` then
``hdfs_io.copy`` of the whole actor folder; the FSDP manager ignores ``hdfs_path``). A local
folder stands in for HDFS, which ``hdfs_io.copy`` treats as a plain copy. The real FSDP run with
pruning is ``test_e2e_repo_cpu.py::test_old_checkpoints_are_pruned_with_the_actor``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from verl.trainer.ppo.checkpoint_callback import CheckpointCallback
from verl.utils import hdfs_io
from verl.utils.checkpoint.checkpoint_manager import BaseCheckpointManager

from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.store_checkpoint import load_store_state
from repo_ext.integration.trainer import RePOTrainer

STORE = "repo_store.pt"


class _ActorWorkers:
    """The actor worker group's ``save_checkpoint`` as verl's checkpoint managers run it on rank 0."""

    def __init__(self, copies_to_remote: bool):
        self.retention = BaseCheckpointManager.__new__(BaseCheckpointManager)  # only its retention state
        self.retention.previous_saved_paths = []
        self.copies_to_remote = copies_to_remote

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        self.retention.ensure_checkpoint_capacity(max_ckpt_to_keep)
        os.makedirs(local_path, exist_ok=True)
        Path(local_path, "model_world_size_1_rank_0.pt").write_bytes(b"weights %d" % global_step)
        if self.copies_to_remote and hdfs_path is not None:
            hdfs_io.makedirs(hdfs_path, exist_ok=True)
            hdfs_io.copy(src=local_path, dst=hdfs_path, dirs_exist_ok=True)
        self.retention.register_checkpoint(local_path, max_ckpt_to_keep)


class _Dataloader:
    def state_dict(self):
        return {"epoch": 0}


def _trainer(local: Path, remote: Path | None, keep: int | None, copies_to_remote: bool) -> RePOTrainer:
    trainer = RePOTrainer.__new__(RePOTrainer)  # no workers, no Ray: only what _save_checkpoint reads
    trainer.config = OmegaConf.create(
        {
            "trainer": {
                "default_local_dir": str(local),
                "default_hdfs_dir": None if remote is None else str(remote),
                "max_actor_ckpt_to_keep": keep,
                "max_critic_ckpt_to_keep": keep,
            },
            "actor_rollout_ref": {"actor": {"checkpoint": {"async_save": False}}},
        }
    )
    trainer.actor_rollout_wg = _ActorWorkers(copies_to_remote)
    trainer.train_dataloader = _Dataloader()
    trainer.checkpoint_callback = CheckpointCallback()
    trainer.use_critic = False
    trainer.trainer_mode = "sync"
    trainer.replay_store = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    trainer._total_injected, trainer._bad_rows = 0, {}  # counters saved with the store (as __init__ sets them)
    return trainer


def _save_steps(trainer: RePOTrainer, steps) -> None:
    for step in steps:
        trainer.replay_store.insert("p", np.arange(step), np.full(step, -0.5, np.float32), 1.0, step)
        trainer.global_steps = step
        trainer._save_checkpoint()


def _store_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob(STORE)} if root.exists() else set()


@pytest.mark.parametrize(("keep", "kept"), [(1, [4]), (2, [3, 4]), (None, [1, 2, 3, 4])])
def test_store_files_are_pruned_with_the_actor_checkpoint(tmp_path, keep, kept):
    local = tmp_path / "ckpt"
    _save_steps(_trainer(local, None, keep, copies_to_remote=False), [1, 2, 3, 4])
    assert _store_files(local) == {f"global_step_{s}/actor/{STORE}" for s in kept}
    # exactly the steps whose actor checkpoint verl kept (verl itself leaves global_step_N/data.pt)
    assert sorted(int(p.parent.name.split("_")[-1]) for p in local.glob("global_step_*/actor")) == kept
    assert sorted(p.parent.name for p in local.glob("global_step_*/data.pt")) == [f"global_step_{s}" for s in (1, 2, 3, 4)]
    last = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    load_store_state(last, local / "global_step_4", expected_step=4)
    assert [e.step for e in last.entries("p")] == [1, 2, 3, 4]


def test_store_files_are_copied_where_verl_copies_the_actor(tmp_path):
    local, remote = tmp_path / "ckpt", tmp_path / "remote"
    _save_steps(_trainer(local, remote, 1, copies_to_remote=True), [1, 2, 3])
    # verl never prunes the remote copies; each is the store of its own step
    assert _store_files(remote) == {f"global_step_{s}/actor/{STORE}" for s in (1, 2, 3)}
    assert _store_files(local) == {f"global_step_3/actor/{STORE}"}
    for step in (1, 2, 3):
        copy = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
        load_store_state(copy, remote / f"global_step_{step}", expected_step=step)
        assert [e.step for e in copy.entries("p")] == list(range(max(1, step - 3), step + 1))


def test_no_remote_copy_where_verl_copies_none(tmp_path):
    """verl's FSDP checkpoint manager ignores ``hdfs_path``: then nothing of RePO lands there either."""
    local, remote = tmp_path / "ckpt", tmp_path / "remote"
    _save_steps(_trainer(local, remote, None, copies_to_remote=False), [1, 2])
    assert _store_files(remote) == set()
    assert _store_files(local) == {f"global_step_{s}/actor/{STORE}" for s in (1, 2)}
