"""Resuming RePO from a checkpoint without a replay store (e.g. a GRPO run's): refused before Ray
unless ``algorithm.repo.missing_store_on_resume=empty`` asks for a warm start with an empty store.

The checkpoints are laid out as verl 0.9.1 writes them (``global_step_N/actor/``, ``data.pt``, the
tracker file); only the worker group and the dataloader are stand-ins (as in
``tests/reliability/test_checkpoint_faults.py``). The real ``_load_checkpoint`` of verl and of
the RePO trainer run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from launch_config import SMALL_REPO_LAUNCH, compose_verl
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from repo_ext.algorithm.config import RePOConfig
from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.config_checks import RePOLaunchCheck
from repo_ext.integration.store_checkpoint import has_store_state, resumed_step_dir, save_store_state, store_on_resume
from repo_ext.integration.hooks.step_state import StepState as _StepState
from repo_ext.integration.trainer import RePOTrainer

TRACKER = "latest_checkpointed_iteration.txt"
SETTING = "algorithm.repo.missing_store_on_resume"


def _grpo_checkpoint(root: Path, step: int) -> Path:
    """What a GRPO run (verl's own trainer) leaves: actor, data.pt, tracker; no replay store."""
    folder = root / f"global_step_{step}"
    (folder / "actor").mkdir(parents=True)
    (folder / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"weights")
    torch.save({"epoch": 0}, folder / "data.pt")
    (root / TRACKER).write_text(str(step))
    return folder


# ---------------------------------------------------------------- the decision, by hand


@pytest.mark.parametrize(
    ("has_store", "mode", "strategy", "expected"),
    [
        (True, "error", "recent_k", "load"),
        (True, "empty", "recent_k", "load"),  # a RePO checkpoint is always restored
        (False, "error", "recent_k", "refuse"),
        (False, "empty", "recent_k", "empty"),
        (False, "error", "none", "empty"),  # no replay: the store is never read, nothing is lost
        (True, "error", "none", "load"),
    ],
)
def test_store_on_resume(has_store, mode, strategy, expected):
    assert store_on_resume(has_store=has_store, missing_store_on_resume=mode, strategy=strategy) == expected


def test_the_setting_is_validated():
    with pytest.raises(ValueError, match=r"algorithm.repo.missing_store_on_resume='skip' is invalid; it must be one of error, empty"):
        RePOConfig(missing_store_on_resume="skip").validate()


def test_resumed_step_dir_follows_verls_rules(tmp_path):
    trainer = {"resume_mode": "auto", "default_local_dir": "ckpts", "resume_from_path": None}
    assert resumed_step_dir(OmegaConf.create(trainer), tmp_path) is None  # no tracker: a fresh start
    folder = _grpo_checkpoint(tmp_path / "ckpts", 3)
    assert resumed_step_dir(OmegaConf.create(trainer), tmp_path) == str(folder)  # relative to the cwd
    assert resumed_step_dir(OmegaConf.create({**trainer, "resume_mode": "disable"}), tmp_path) is None
    path_mode = {**trainer, "resume_mode": "resume_path", "resume_from_path": "ckpts/global_step_3"}
    assert resumed_step_dir(OmegaConf.create(path_mode), tmp_path) == str(folder)
    assert not has_store_state(folder)


# ---------------------------------------------------------------- the launch check (before Ray)


def _launch(tmp_path, *extra):
    return compose_verl(list(SMALL_REPO_LAUNCH) + [f"trainer.default_local_dir={tmp_path}", *extra])


def test_launch_refuses_a_checkpoint_without_a_store(tmp_path):
    _grpo_checkpoint(tmp_path, 3)
    with pytest.raises(ValueError) as info:
        RePOLaunchCheck().on_job_start(config=_launch(tmp_path))
    message = str(info.value)
    for fragment in ("trainer.resume_mode=auto", "global_step_3", "no RePO replay store", f"{SETTING}=empty",
                     "trainer.resume_mode=disable"):
        assert fragment in message, (fragment, message)


def test_launch_names_an_unreadable_tracker(tmp_path):
    _grpo_checkpoint(tmp_path, 3)
    (tmp_path / TRACKER).write_text("")  # verl truncates, then writes: a kill in between leaves it empty
    with pytest.raises(ValueError) as info:
        RePOLaunchCheck().on_job_start(config=_launch(tmp_path))
    for fragment in ("latest_checkpointed_iteration.txt", "is not a step number", "trainer.resume_mode=disable"):
        assert fragment in str(info.value), (fragment, str(info.value))


def test_launch_accepts_the_warm_start_a_repo_checkpoint_or_no_resume(tmp_path):
    folder = _grpo_checkpoint(tmp_path, 3)
    RePOLaunchCheck().on_job_start(config=_launch(tmp_path, f"{SETTING}=empty"))
    RePOLaunchCheck().on_job_start(config=_launch(tmp_path, "trainer.resume_mode=disable"))
    RePOLaunchCheck().on_job_start(config=_launch(tmp_path, "algorithm.repo.strategy=none"))
    save_store_state(ReplayStore(max_cache_size=4, min_cache_to_replay=2), folder, 3)
    RePOLaunchCheck().on_job_start(config=_launch(tmp_path))


# ---------------------------------------------------------------- the trainer's resume


class _Recorder:
    def __init__(self):
        self.loaded = []
        self.drop_last = True

    def load_checkpoint(self, local_path, del_local_after_load=False):
        self.loaded.append(local_path)

    def load_state_dict(self, state):
        self.loaded.append(state)


def _trainer(root: Path, **repo) -> RePOTrainer:
    trainer = RePOTrainer.__new__(RePOTrainer)  # no workers, no Ray: what _load_checkpoint and the reports read
    trainer.config = OmegaConf.create({
        "trainer": {"resume_mode": "auto", "default_local_dir": str(root), "resume_from_path": None,
                    "del_local_ckpt_after_load": False, "total_epochs": 10, "total_training_steps": None},
        "data": {"train_batch_size": 2, "max_response_length": 8},
        "actor_rollout_ref": {"rollout": {"n": 2}},
    })
    trainer.repo_config = RePOConfig(min_cache_to_replay=2, max_cache_size=4, num_replays=2, **repo)
    trainer.actor_rollout_wg, trainer.train_dataloader = _Recorder(), _Recorder()
    trainer.use_critic, trainer.trainer_mode = False, "sync"
    trainer.train_dataset, trainer.steps_per_epoch = [0, 1, 2, 3], 2
    trainer.replay_store = trainer.repo_config.build_store()
    trainer._total_injected, trainer._bad_rows = 0, {}
    trainer._step_state, trainer._gate_warning_done = _StepState(), False
    return trainer


def test_warm_start_from_a_grpo_checkpoint_starts_an_empty_store(tmp_path, capsys, caplog, monkeypatch):
    _grpo_checkpoint(tmp_path, 3)
    trainer = _trainer(tmp_path, missing_store_on_resume="empty")
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.trainer"):
        trainer._load_checkpoint()
    # verl resumed the actor and the data loader from the GRPO checkpoint
    assert trainer.global_steps == 3 and trainer.actor_rollout_wg.loaded == [str(tmp_path / "global_step_3" / "actor")]
    assert trainer.replay_store.num_entries == 0 and trainer._store_start_step == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "EMPTY store" in warnings[0] and f"{SETTING}=empty" in warnings[0]
    # 4 prompts / batch 2 = 2 steps per epoch; min 2 at n=2: 1 visit, replay from 3 + 1 * 2 + 1 = 6
    assert "replay can first happen at step 6 of 20 after the warm start at step 3" in capsys.readouterr().out

    # the metric, and no "stalled" warning up to the moved gate step 6 (without the move: from step 4)
    trainer.global_steps = 6
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.trainer"):
        trainer._check_replay_alive()
    assert trainer._step_state.metrics["repo/store_start_step"] == 3.0
    assert trainer._step_state.metrics["repo/replay_stalled"] == 0.0 and not caplog.records
    trainer.global_steps = 7
    trainer._check_replay_alive()
    assert trainer._step_state.metrics["repo/replay_stalled"] == 1.0

    # saved and resumed again: the store now exists, and the gate still counts from step 3
    trainer.replay_store.insert("p", np.array([1, 2], np.int32), np.array([-0.5, -0.25], np.float32), 1.0, 7)
    monkeypatch.setattr(PPOTrainerSync, "_save_checkpoint", lambda self: None, raising=False)
    trainer._save_checkpoint()
    (tmp_path / "global_step_7" / "actor" / "weights.pt").write_bytes(b"weights")
    torch.save({"epoch": 3}, tmp_path / "global_step_7" / "data.pt")
    (tmp_path / TRACKER).write_text("7")
    again = _trainer(tmp_path)  # the default (error) now finds a store: loads it
    again._load_checkpoint()
    assert again.replay_store.num_entries == 1 and again._store_start_step == 3


def test_strict_default_refuses_in_the_trainer_too(tmp_path):
    _grpo_checkpoint(tmp_path, 3)
    with pytest.raises(FileNotFoundError) as info:
        _trainer(tmp_path)._load_checkpoint()
    assert "not written by the RePO trainer" in str(info.value) and f"{SETTING}=empty" in str(info.value)


def test_no_replay_resumes_a_grpo_checkpoint_silently(tmp_path, caplog):
    _grpo_checkpoint(tmp_path, 3)
    trainer = _trainer(tmp_path, strategy="none")
    with caplog.at_level(logging.WARNING, logger="repo_ext.integration.trainer"):
        trainer._load_checkpoint()
    assert trainer.global_steps == 3 and trainer.replay_store.num_entries == 0 and not caplog.records
