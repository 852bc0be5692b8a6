"""Hooks ``_save_checkpoint`` and ``_load_checkpoint`` (driver): the replay store and the run-long
counters go with every verl checkpoint and come back on resume (``store_checkpoint``)."""

from __future__ import annotations

import logging
import os
from typing import Any

from repo_ext.integration.hooks.row_dump import dump_restored_store
from repo_ext.integration.replay_counters import counters_extra, restore_counters, restore_store_start_step
from repo_ext.integration.store_checkpoint import (
    STORE_ON_RESUME_SETTING,
    has_store_state,
    load_store_state,
    save_store_state,
    store_on_resume,
    store_path,
)

logger = logging.getLogger(__name__)


def save_store(trainer: Any) -> None:
    """The store into ``global_step_N/actor/``, called before verl saves the actor (so verl prunes and
    copies it with the actor) and before verl writes its tracker file last (see store_checkpoint)."""
    step_dir = os.path.join(trainer.config.trainer.default_local_dir, f"global_step_{trainer.global_steps}")
    save_store_state(
        trainer.replay_store, step_dir, trainer.global_steps,
        extra=counters_extra(trainer._total_injected, trainer._bad_rows, store_start_step=trainer._store_start_step),
    )


def resume_store(trainer: Any) -> None:
    """After verl's ``_load_checkpoint`` resumed at ``trainer.global_steps`` > 0: the store and the
    counters from that checkpoint, or an empty store (``store_checkpoint.store_on_resume``)."""
    step_dir = loaded_step_dir(trainer.config.trainer, trainer.global_steps)
    decision = store_on_resume(
        has_store=has_store_state(step_dir),
        missing_store_on_resume=trainer.repo_config.missing_store_on_resume,
        strategy=trainer.repo_config.strategy,
    )
    if decision == "empty":
        _start_with_empty_store(trainer, step_dir)
        return
    # "refuse" too: load_store_state raises FileNotFoundError naming the setting
    store = trainer.replay_store
    extra = load_store_state(store, step_dir, expected_step=trainer.global_steps)
    trainer._total_injected, trainer._bad_rows = restore_counters(extra)  # run-long, not per process
    trainer._store_start_step = restore_store_start_step(extra)
    if trainer._store_start_step:  # a warm-started run resumed again: its gate still counts from there
        trainer._report_replay_outlook()
    dump_restored_store(store, trainer.global_steps)
    logger.info(
        "RePO: restored replay store from %s (%d prompts, %d entries, %d bytes)",
        step_dir, store.num_prompts, store.num_entries, store.nbytes,
    )


def _start_with_empty_store(trainer: Any, step_dir: str) -> None:
    """A resume from a checkpoint without a store (missing_store_on_resume=empty, or no replay):
    the actor, optimizer and data loader continue from it; the store starts empty now."""
    trainer._store_start_step = trainer.global_steps
    if trainer.repo_config.strategy != "none":
        logger.warning(
            "RePO: resumed from %s, which has no replay store (%s): a warm start with an EMPTY store, as "
            "%s=empty asks. Replay starts as in a fresh run, counted from step %d; repo/store_start_step "
            "logs %d.",
            step_dir, store_path(step_dir), STORE_ON_RESUME_SETTING, trainer.global_steps, trainer.global_steps,
        )
        trainer._report_replay_outlook()


def loaded_step_dir(trainer_config: Any, global_steps: int) -> str:
    """The absolute ``global_step_N`` folder verl resumed from (``trainer.resume_mode``)."""
    if trainer_config.resume_mode == "resume_path":
        path = str(trainer_config.resume_from_path)
    else:
        path = os.path.join(str(trainer_config.default_local_dir), f"global_step_{global_steps}")
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
