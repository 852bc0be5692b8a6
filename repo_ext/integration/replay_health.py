"""Is replay doing anything? The diagnosis behind the RePO trainer's "replay stalled" warning.

A replay that silently does nothing looks like a healthy GRPO run; users of replay methods report
it as "replay silently disabled". The trainer asks :func:`replay_stall_reason` after every
injection; once the gate should have opened and nothing has been replayed, it warns with the
reason found here and logs ``repo/replay_stalled = 1``.

When the gate should open: a prompt gets ``rollout.n`` new entries per visit and (without
duplicates in the data) one visit per epoch, so it holds ``min_cache_to_replay`` entries after
``ceil(min_cache_to_replay / n)`` visits and is replayed at its next visit, in the epoch after:
the first step of that epoch is ``ceil(min_cache_to_replay / n) * steps_per_epoch + 1``. One more
step of grace covers the batches of that epoch whose prompts were dropped by ``drop_last`` earlier.

Before the run, :func:`replay_outlook` gives the same step from the dataset size and the run's
length, so that a run too short to ever replay is announced at start-up instead of after it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


def replay_gate_step(*, min_cache_to_replay: int, rollout_n: int, steps_per_epoch: int) -> int:
    """The first training step at which replayed rows are expected (see the module docstring)."""
    visits = math.ceil(min_cache_to_replay / max(rollout_n, 1))
    return visits * max(steps_per_epoch, 1) + 1


@dataclass(frozen=True)
class ReplayOutlook:
    """When replay can first happen in a run, known at start-up (:func:`replay_outlook`).

    Steps are verl's ``global_steps`` (the first training step is 1). ``first_replay_step`` is None
    when no prompt can ever pass the gate.
    """

    strategy: str
    steps_per_epoch: int
    run_steps: int  #: the last step the run trains (verl stops at min(total_training_steps, epochs x steps))
    visits_to_fill: int | None  #: earlier visits a prompt needs to hold min_cache_to_replay entries
    first_replay_step: int | None
    store_start_step: int  #: the store started empty after this step (0, or the step a warm start resumed at)
    responses_to_keep: int  #: about how many responses the store holds between a prompt's first visit and its replay
    byte_cap_mean_tokens: float | None  #: mean response length above which max_store_bytes evicts them first
    settings: Mapping[str, object]  #: the settings it was computed from, by their config names

    def summary(self) -> str:
        """One line for the start-up log."""
        s = self.settings
        if self.strategy == "none":
            return "RePO: algorithm.repo.strategy=none: no replay (plain GRPO)."
        if self.first_replay_step is None:
            return f"RePO: replay can never happen ({self._never_reason()})."
        start = f" after the warm start at step {self.store_start_step}" if self.store_start_step else ""
        return (
            f"RePO: replay can first happen at step {self.first_replay_step} of {self.run_steps}{start}: a prompt "
            f"holds algorithm.repo.min_cache_to_replay={s['algorithm.repo.min_cache_to_replay']} responses after "
            f"{self.visits_to_fill} visits of actor_rollout_ref.rollout.n={s['actor_rollout_ref.rollout.n']}, one "
            f"visit per epoch of {self.steps_per_epoch} steps ({s['dataset_prompts']} prompts, "
            f"data.train_batch_size={s['data.train_batch_size']}), and is replayed at its next visit."
        )

    def warning(self) -> str | None:
        """Why this run will (or may) never replay, naming the settings to change; None when it will."""
        if self.strategy == "none":
            return None
        s = self.settings
        cost = "no row would be replayed and this run is plain GRPO at RePO's cost"
        if self.steps_per_epoch < 1:
            return (
                f"the training set has {s['dataset_prompts']} prompts, fewer than data.train_batch_size="
                f"{s['data.train_batch_size']}: an epoch has no step. Use a smaller data.train_batch_size."
            )
        if self.first_replay_step is None:
            return f"{self._never_reason()}: {cost}. Set algorithm.repo.max_cache_size >= min_cache_to_replay."
        if self.first_replay_step > self.run_steps:
            return (
                f"replay can first happen at step {self.first_replay_step}, but the run ends at step "
                f"{self.run_steps} (trainer.total_epochs={s['trainer.total_epochs']}, trainer.total_training_steps="
                f"{s['trainer.total_training_steps']}): {cost}. A prompt needs {self.visits_to_fill} earlier visits "
                f"(one per epoch of {self.steps_per_epoch} steps) to hold algorithm.repo.min_cache_to_replay="
                f"{s['algorithm.repo.min_cache_to_replay']} responses at actor_rollout_ref.rollout.n="
                f"{s['actor_rollout_ref.rollout.n']}. To replay in this run: {self._remedies()}; or set "
                "algorithm.repo.strategy=none to train plain GRPO on purpose."
            )
        cap_tokens = self.byte_cap_mean_tokens
        if cap_tokens is not None and cap_tokens < s["data.max_response_length"]:
            if cap_tokens < 1:
                verdict = f"cannot hold them even at one token each: {cost}"
            else:
                verdict = (
                    f"holds them only while responses average at most {cap_tokens:.0f} tokens (data.max_response_length="
                    f"{s['data.max_response_length']}); longer responses are evicted before their prompt comes back, "
                    "and replay never starts"
                )
            return (
                f"replay needs the store to keep about {self.responses_to_keep} responses ({self.visits_to_fill} "
                f"epochs of {self.steps_per_epoch} steps x data.train_batch_size={s['data.train_batch_size']} x "
                f"actor_rollout_ref.rollout.n={s['actor_rollout_ref.rollout.n']}); algorithm.repo.max_store_bytes="
                f"{s['algorithm.repo.max_store_bytes']} {verdict}. Raise max_store_bytes (null: no cap), or lower "
                "algorithm.repo.min_cache_to_replay."
            )
        return None

    def _never_reason(self) -> str:
        s = self.settings
        return (
            f"algorithm.repo.max_cache_size={s['algorithm.repo.max_cache_size']} < algorithm.repo.min_cache_to_replay="
            f"{s['algorithm.repo.min_cache_to_replay']}: no prompt ever holds enough entries to pass the gate"
        )

    def _remedies(self) -> str:
        s = self.settings
        n, min_cache = int(s["actor_rollout_ref.rollout.n"]), int(s["algorithm.repo.min_cache_to_replay"])
        longer = f"trainer.total_epochs >= {math.ceil(self.first_replay_step / self.steps_per_epoch)}"
        if s["trainer.total_training_steps"] is not None:
            longer += f" and trainer.total_training_steps >= {self.first_replay_step} (or unset)"
        remedies = [f"train at least {self.first_replay_step} steps ({longer})"]
        # whole epochs before the run's last step: how often a prompt can be visited before it
        visits_available = (self.run_steps - self.store_start_step - 1) // self.steps_per_epoch
        if visits_available >= 1:
            remedies.append(f"lower algorithm.repo.min_cache_to_replay to <= {n * visits_available}")
            remedies.append(f"raise actor_rollout_ref.rollout.n to >= {math.ceil(min_cache / visits_available)}")
        return ", or ".join(remedies)


def replay_outlook(
    *,
    strategy: str,
    dataset_prompts: int,
    train_batch_size: int,
    drop_last: bool,
    total_epochs: int,
    total_training_steps: int | None,
    rollout_n: int,
    min_cache_to_replay: int,
    max_cache_size: int,
    max_store_bytes: int | None,
    max_response_length: int,
    bytes_per_token: float,
    store_start_step: int = 0,
) -> ReplayOutlook:
    """The step at which replay can first happen in a run, and whether the run reaches it.

    verl's sampler (random or sequential) visits each prompt at most once per epoch, an epoch being
    ``dataset_prompts // train_batch_size`` steps (``drop_last``; ``ceil`` without it). A prompt gets
    ``rollout_n`` entries per visit, so it holds ``min_cache_to_replay`` entries after
    ``k = ceil(min_cache_to_replay / rollout_n)`` visits and is replayed at visit ``k + 1``: the
    earliest such visit is the first step of epoch ``k + 1``, step ``store_start_step + k *
    steps_per_epoch + 1`` (with shuffling too: at that step every prompt of the batch was visited in
    each earlier epoch, unless ``drop_last`` dropped it from one). Same as :func:`replay_gate_step`.

    For the byte cap: the store evicts the globally oldest entries first, so a prompt's entries from
    its first visit survive to its replay only if the store keeps every response inserted in
    between, about ``k`` epochs' worth (``k * steps_per_epoch * train_batch_size * rollout_n``).

    Args:
        dataset_prompts: rows of the training dataset (after verl's filtering).
        total_training_steps: ``trainer.total_training_steps`` (None: epochs x steps per epoch).
        bytes_per_token: store bytes per response token (``config_checks.STORE_BYTES_PER_TOKEN``).
        store_start_step: the step after which the store started empty (a warm start from a
            checkpoint without a store); 0 for a fresh run.
    """
    steps_per_epoch = dataset_prompts // train_batch_size if drop_last else math.ceil(dataset_prompts / train_batch_size)
    run_steps = steps_per_epoch * total_epochs
    if total_training_steps is not None:
        run_steps = min(run_steps, int(total_training_steps))
    settings = {
        "dataset_prompts": dataset_prompts,
        "data.train_batch_size": train_batch_size,
        "data.max_response_length": max_response_length,
        "trainer.total_epochs": total_epochs,
        "trainer.total_training_steps": total_training_steps,
        "actor_rollout_ref.rollout.n": rollout_n,
        "algorithm.repo.min_cache_to_replay": min_cache_to_replay,
        "algorithm.repo.max_cache_size": max_cache_size,
        "algorithm.repo.max_store_bytes": max_store_bytes,
    }
    visits = math.ceil(min_cache_to_replay / rollout_n) if max_cache_size >= min_cache_to_replay else None
    first = None if visits is None else store_start_step + visits * steps_per_epoch + 1
    keep = (visits or 0) * steps_per_epoch * train_batch_size * rollout_n
    cap_tokens = None
    if max_store_bytes is not None and keep > 0:
        cap_tokens = max_store_bytes / (bytes_per_token * keep)
    return ReplayOutlook(
        strategy=strategy,
        steps_per_epoch=steps_per_epoch,
        run_steps=run_steps,
        visits_to_fill=visits,
        first_replay_step=first,
        store_start_step=store_start_step,
        responses_to_keep=keep,
        byte_cap_mean_tokens=cap_tokens,
        settings=settings,
    )


def fewest_steps_to_replay(*, min_cache_to_replay: int, rollout_n: int) -> int:
    """Steps any run needs before its first replay, whatever the data size: ``ceil(min/n) + 1``.

    A prompt is visited at most once per step, and needs ``ceil(min_cache_to_replay / rollout_n)``
    visits before the one that replays it. The launch check compares it with
    ``trainer.total_training_steps`` before the dataset is loaded.
    """
    return math.ceil(min_cache_to_replay / rollout_n) + 1


def replay_stall_reason(
    *,
    strategy: str,
    global_step: int,
    total_injected: int,
    min_cache_to_replay: int,
    rollout_n: int,
    steps_per_epoch: int,
    store_stats: Mapping[str, int],
    bad_rows: Mapping[str, int],
    dataset_prompts: int | None = None,
    store_start_step: int = 0,
) -> str | None:
    """Why replay has not injected anything although it should have by ``global_step``; None when fine.

    Args:
        strategy: ``algorithm.repo.strategy`` (``none`` never stalls).
        global_step: the current training step (its injection already done).
        total_injected: replayed rows injected since this process started (or resumed).
        min_cache_to_replay, rollout_n, steps_per_epoch: give the gate step (:func:`replay_gate_step`).
        store_stats: :meth:`~repo_ext.algorithm.store.ReplayStore.stats` of the store now.
        bad_rows: on-policy rows not stored, by reason (``insert_on_policy_rows`` counters).
        dataset_prompts: rows of the training dataset, if known (distinct prompt keys cannot exceed it).
        store_start_step: the step after which the store started empty (a warm start from a
            checkpoint without a store moves the gate by it); 0 for a run that started with it.
    """
    if strategy == "none" or total_injected > 0:
        return None
    gate = store_start_step + replay_gate_step(
        min_cache_to_replay=min_cache_to_replay, rollout_n=rollout_n, steps_per_epoch=steps_per_epoch
    )
    if global_step <= gate:
        return None
    prefix = (
        f"replay is on (algorithm.repo.strategy={strategy}) but no replayed row has been injected by step "
        f"{global_step}, although the gate should have opened at step {gate} (min_cache_to_replay="
        f"{min_cache_to_replay}, rollout.n={rollout_n}, {steps_per_epoch} steps per epoch): "
    )
    prompts, entries = store_stats["num_prompts"], store_stats["num_entries"]
    replayable, byte_evictions = store_stats["num_replayable_prompts"], store_stats["num_byte_evictions"]
    rejected = {reason: count for reason, count in bad_rows.items() if count and reason != "duplicate_prompt_groups"}
    rejected_text = ", ".join(f"{reason}={count}" for reason, count in sorted(rejected.items())) or "none"
    if entries == 0:
        return prefix + (
            f"the replay store is empty; on-policy rows not stored, by reason: {rejected_text}. Fix the data or "
            "the reward function so that responses can be stored (see docs/reliability.md)."
        )
    if dataset_prompts is not None and prompts > dataset_prompts:
        return prefix + (
            f"the store holds {prompts} distinct prompt keys for {dataset_prompts} prompts in the dataset, so the "
            "same prompt gets different token ids on different visits (e.g. a random or dated system prompt in "
            "the chat template). RePO keys its buffers by the prompt's token ids: make the prompt deterministic."
        )
    if byte_evictions > 0:
        inserted = max(int(store_stats["num_inserted"]), 1)
        steps_held = entries * global_step / inserted  # at the average insertion rate so far
        return prefix + (
            f"algorithm.repo.max_store_bytes={store_stats['max_store_bytes']} has evicted {byte_evictions} entries: "
            f"the store holds {entries} entries, about the last {steps_held:.0f} steps of responses, while a prompt "
            f"comes back once every {steps_per_epoch} steps, so its entries are gone before its next visit "
            f"({replayable} prompts pass the gate now). Raise max_store_bytes to hold min_cache_to_replay responses "
            "of every prompt of an epoch, or set it to null."
        )
    if replayable == 0:
        return prefix + (
            f"no prompt holds min_cache_to_replay={min_cache_to_replay} entries yet ({entries} entries over "
            f"{prompts} prompts); on-policy rows not stored, by reason: {rejected_text}. Lower "
            "min_cache_to_replay or check why rows are not stored."
        )
    return prefix + (
        f"{replayable} prompts pass the gate, but none of them was in a batch since; check the sampler "
        "(data.shuffle, a custom sampler) visits every prompt once per epoch."
    )
