"""Start-up checks: RePO settings combined with verl settings that cannot work fail before training.

Single RePO values are validated by :class:`~repo_ext.algorithm.config.RePOConfig`; this module
checks combinations with the rest of verl's config. Every error names the setting, its value and
what would work. :func:`validate_trainer_config` is every check that needs only the config; two
callers run it:

- :class:`RePOLaunchCheck`, a Hydra callback in the launching process, before Ray starts. It also
  catches RePO's estimator or loss selected WITHOUT the RePO trainer: that run has no replay store,
  so the RePO trainer cannot report it (it never runs);
- the RePO trainer when it starts (for launches that bypass Hydra, e.g. a config built in Python).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from repo_ext.algorithm.config import RePOConfig
from repo_ext.algorithm.store import BYTES_PER_TOKEN, entry_nbytes
from repo_ext.integration.entry_points import experimental_entry_point, experimental_entry_point_error
from repo_ext.integration.zero_adv_skip import resolve_skip_zero_advantage_rows
from repo_ext.integration.estimators import ADV_ESTIMATOR_NAME, POLICY_LOSS_NAME, TRAINER_MODE, repo_config_from_algorithm
from repo_ext.integration.replay_health import fewest_steps_to_replay
from repo_ext.integration.store_checkpoint import (
    STORE_ON_RESUME_SETTING,
    has_store_state,
    resumed_step_dir,
    store_on_resume,
    store_path,
)

logger = logging.getLogger(__name__)

#: bytes one stored response token takes (int32 id + float32 behaviour log-prob); a response with
#: non-loss tokens (multi-turn tool output) also stores its loss mask, 1 bit per token rounded up to
#: whole bytes (``store.entry_nbytes``)
STORE_BYTES_PER_TOKEN = BYTES_PER_TOKEN


def check_repo_wiring(config: DictConfig, repo: RePOConfig) -> None:
    """When RePO's estimator or loss is selected with replay on, the trainer that runs is RePO's.

    Raises ValueError when ``repo_split`` or ``repo`` is selected with a trainer that has no replay
    store (replay configured, nothing ever replayed), and when ``trainer_mode=repo_sync`` is set
    but verl's legacy trainer (``trainer.use_v1=False``), which ignores it, would run.
    """
    repo_mode = TRAINER_MODE
    trainer_mode = str(config.trainer.v1.get("trainer_mode", "sync"))
    adv_estimator = str(config.algorithm.adv_estimator)
    loss_mode = str(config.actor_rollout_ref.actor.policy_loss.get("loss_mode", "vanilla"))
    if trainer_mode == repo_mode:
        if not config.trainer.get("use_v1", True):
            raise ValueError(
                f"trainer.use_v1=False runs verl's legacy trainer, which ignores trainer.v1.trainer_mode={repo_mode}: "
                "the replay store would never run. Set trainer.use_v1=True (the RePO trainer is a V1 trainer)."
            )
        return
    if repo.strategy == "none":
        return  # repo_split / repo without replay are plain GRPO / PPO-clip: a valid baseline
    selected = [
        f"{name}={value}"
        for name, value, repo_value in (
            ("algorithm.adv_estimator", adv_estimator, ADV_ESTIMATOR_NAME),
            ("actor_rollout_ref.actor.policy_loss.loss_mode", loss_mode, POLICY_LOSS_NAME),
        )
        if value == repo_value
    ]
    if selected:
        raise ValueError(
            f"{' and '.join(selected)} with trainer.v1.trainer_mode={trainer_mode}: that trainer has no replay "
            f"store, so algorithm.repo.strategy={repo.strategy} would never replay anything. Set "
            f"trainer.v1.trainer_mode={repo_mode} (or launch with algorithm=repo), or set "
            "algorithm.repo.strategy=none to run these as plain GRPO."
        )


def check_repo_batch_settings(config: DictConfig, repo: RePOConfig) -> None:
    """Batch, loss and store settings that the RePO trainer cannot run with."""
    actor = config.actor_rollout_ref.actor
    train_batch_size = int(config.data.train_batch_size)
    mini_batch_size = int(actor.ppo_mini_batch_size)
    if mini_batch_size < 1 or train_batch_size % mini_batch_size != 0:
        divisors = [d for d in range(1, train_batch_size + 1) if train_batch_size % d == 0]
        raise ValueError(
            f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch_size} does not divide "
            f"data.train_batch_size={train_batch_size}. The RePO trainer spreads replayed rows over "
            "train_batch_size / ppo_mini_batch_size optimizer steps, so it must be a whole number: use a "
            f"ppo_mini_batch_size in {divisors}, or a train_batch_size that is a multiple of {mini_batch_size}."
        )
    loss_agg_mode = str(actor.get("loss_agg_mode", "token-mean"))
    if repo.loss_weighting == "paper" and not loss_agg_mode.startswith("seq-mean"):
        raise ValueError(
            f"algorithm.repo.loss_weighting=paper averages on- and off-policy rows per sequence, but "
            f"actor_rollout_ref.actor.loss_agg_mode={loss_agg_mode} is token-level. Use loss_agg_mode="
            "seq-mean-token-mean (or seq-mean-token-sum / seq-mean-token-sum-norm), or "
            "algorithm.repo.loss_weighting=reference."
        )
    max_response_length = int(config.data.max_response_length)
    # the largest entry: a full-length response with tool tokens, which carries its loss mask
    one_response = entry_nbytes(max_response_length, masked=True)
    if repo.strategy != "none" and repo.max_store_bytes is not None and repo.max_store_bytes < one_response:
        raise ValueError(
            f"algorithm.repo.max_store_bytes={repo.max_store_bytes} cannot hold one response of "
            f"data.max_response_length={max_response_length} tokens ({STORE_BYTES_PER_TOKEN} bytes per token, plus "
            f"1 bit per token for a response with tool tokens: {one_response} bytes). Use max_store_bytes >= {one_response}; for replay to reach the gate it must "
            f"hold min_cache_to_replay={repo.min_cache_to_replay} responses of every prompt of an epoch, or null "
            "for no cap."
        )


#: actor strategies whose engine records and replays MoE routes (verl/workers/engine_workers.py
#: reads ``actor.<strategy>.router_replay.mode`` for these only)
ROUTER_REPLAY_STRATEGIES = ("megatron", "veomni")


def check_verl_features(config: DictConfig, repo: RePOConfig) -> None:
    """verl features that replayed rows cannot take part in (only when replay is on)."""
    if repo.strategy == "none":
        return
    replay = f"algorithm.repo.strategy={repo.strategy}"
    if config.algorithm.get("use_kl_in_reward", False):
        raise ValueError(
            f"algorithm.use_kl_in_reward=True with {replay}: verl subtracts a KL penalty computed from each "
            "row's old log-probs from its reward, and on replayed rows those are the stored behaviour log-probs "
            "of an older policy, so replayed rows would get a wrong penalty. Use the KL loss instead "
            "(actor_rollout_ref.actor.use_kl_loss=True, algorithm.use_kl_in_reward=False), or set "
            "algorithm.repo.strategy=none."
        )
    actor = config.actor_rollout_ref.actor
    strategy = str(actor.get("strategy", "fsdp"))
    if strategy in ROUTER_REPLAY_STRATEGIES:
        mode = OmegaConf.select(actor, f"{strategy}.router_replay.mode", default="disabled")
        if mode not in (None, "disabled"):
            raise ValueError(
                f"actor_rollout_ref.actor.{strategy}.router_replay.mode={mode} with {replay}: MoE router replay "
                "replays the experts recorded for each row (routed_experts), and a replayed RePO row has no "
                "recorded routes (they are not stored with the response). Set "
                f"actor_rollout_ref.actor.{strategy}.router_replay.mode=disabled, or algorithm.repo.strategy=none."
            )


def repo_sync_trainer_settings(config: DictConfig) -> dict[str, Any]:
    """The settings verl's sync trainer reads (``trainer.v1.sync``) for a RePO run.

    The RePO trainer is verl's sync trainer, so after start-up the config says
    ``trainer_mode=sync`` and verl reads ``trainer.v1.sync``; settings written under
    ``trainer.v1.repo_sync`` (named after the mode the user selected) are laid over it here, so
    they apply. Raises ValueError for ``parameter_sync_step`` other than 1: several local updates
    per training step would replay and count rows per local update, which the RePO trainer does
    not do.
    """
    v1 = config.trainer.v1
    merged: dict[str, Any] = {}
    source: dict[str, str] = {}
    for section in ("sync", TRAINER_MODE):
        values = v1.get(section, None)
        if values is None:
            continue
        values = OmegaConf.to_container(values, resolve=True) if OmegaConf.is_config(values) else dict(values)
        merged.update(values)
        source.update({key: section for key in values})
    step = merged.get("parameter_sync_step", 1)
    if step is not None and int(step) != 1:
        raise ValueError(
            f"trainer.v1.{source['parameter_sync_step']}.parameter_sync_step={step}: the RePO trainer takes one "
            "local update per training step (it injects replayed rows and fills the store once per step). "
            "Use parameter_sync_step=1 and set the number of optimizer steps per training step with "
            "data.train_batch_size / actor_rollout_ref.actor.ppo_mini_batch_size."
        )
    return merged


def check_text_only_model(processor: Any, model_path: Any, repo: RePOConfig) -> None:
    """Refuse a vision-language model (verl built a multi-modal processor for it) when replay is on.

    Replayed rows are text rows with 1-D position ids (``replay_rows.build_replay_row``); a VLM's
    rows carry image inputs and, with M-RoPE (``processor.get_rope_index``, e.g. Qwen2-VL), 3-D
    position ids even for text prompts.
    """
    if repo.strategy == "none" or processor is None:
        return
    rope = ", M-RoPE position ids" if hasattr(processor, "get_rope_index") else ""
    raise ValueError(
        f"actor_rollout_ref.model.path={model_path} is a vision-language model (processor "
        f"{type(processor).__name__}{rope}) and algorithm.repo.strategy={repo.strategy}: RePO replays text-only "
        "rows with 1-D position ids. Use a text-only model, or algorithm.repo.strategy=none to train this "
        "model without replay."
    )


def check_entry_point(config: DictConfig, repo: RePOConfig) -> None:
    """Refuse RePO with replay under one of verl's experimental async entry points (``entry_points``)."""
    if repo.strategy == "none":
        return
    entry = experimental_entry_point(config)
    if entry is None:
        return
    selected = [
        f"{name}={value}"
        for name, value, repo_value in (
            ("trainer.v1.trainer_mode", str(config.trainer.v1.get("trainer_mode", "sync")), TRAINER_MODE),
            ("algorithm.adv_estimator", str(config.algorithm.adv_estimator), ADV_ESTIMATOR_NAME),
            (
                "actor_rollout_ref.actor.policy_loss.loss_mode",
                str(config.actor_rollout_ref.actor.policy_loss.get("loss_mode", "vanilla")),
                POLICY_LOSS_NAME,
            ),
        )
        if value == repo_value
    ]
    if selected:
        raise experimental_entry_point_error(entry, " and ".join(selected) + f" with algorithm.repo.strategy={repo.strategy}")


def check_repo_trainer_requirements(config: DictConfig, repo: RePOConfig) -> None:
    """verl settings the RePO trainer cannot run with at all, each usually left over from a copied script.

    Each message names the override to remove: ``algorithm=repo`` sets the estimator and the loss,
    so another value there comes from a later override on the command line or in the script.
    """
    mode = f"the RePO trainer (trainer.v1.trainer_mode={TRAINER_MODE}, set by algorithm=repo)"
    estimator = str(config.algorithm.adv_estimator)
    if estimator != ADV_ESTIMATOR_NAME:
        raise ValueError(
            f"algorithm.adv_estimator={estimator}: {mode} needs algorithm.adv_estimator={ADV_ESTIMATOR_NAME} "
            f"(replayed rows need their own advantage groups). Remove the override algorithm.adv_estimator="
            f"{estimator} (algorithm=repo sets {ADV_ESTIMATOR_NAME}, which is plain GRPO with "
            "algorithm.repo.strategy=none)."
        )
    loss_mode = str(config.actor_rollout_ref.actor.policy_loss.get("loss_mode", "vanilla"))
    if loss_mode != POLICY_LOSS_NAME:
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}: {mode} needs "
            f"actor_rollout_ref.actor.policy_loss.loss_mode={POLICY_LOSS_NAME} (RePO's PPO-clip loss over on-policy "
            f"and replayed rows); RePO has no {loss_mode} variant. Remove the "
            f"override actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode} (algorithm=repo sets "
            f"{POLICY_LOSS_NAME})."
        )
    if config.critic.get("enable", False):
        raise ValueError(
            f"critic.enable={config.critic.enable}: RePO is a critic-free (GRPO-style) method. Remove the override "
            "critic.enable=True (or set critic.enable=False)."
        )
    n = int(config.actor_rollout_ref.rollout.n)
    if n < 2 and repo.strategy != "none":
        raise ValueError(
            f"actor_rollout_ref.rollout.n={n}: RePO needs at least 2 on-policy samples per prompt "
            "(group-relative advantages); use n >= 2, or algorithm.repo.strategy=none"
        )
    if is_distillation_on(config):
        raise ValueError(
            "distillation.enabled=True: RePO does not combine with verl's distillation loss. Remove the override "
            "distillation.enabled=True."
        )
    filter_groups = config.algorithm.get("filter_groups", None)
    if filter_groups is not None and filter_groups.get("enable", False):
        raise ValueError(
            "algorithm.filter_groups.enable=True (DAPO dynamic sampling) is not supported by the RePO trainer: "
            "replay is RePO's answer to all-equal groups. Remove the override algorithm.filter_groups.enable=True "
            "(e.g. from a DAPO script)."
        )
    correction = config.algorithm.get("rollout_correction", None)
    loss_type = None if correction is None else correction.get("loss_type", "ppo_clip")
    if correction is not None and correction.get("bypass_mode", False) and loss_type not in (None, "ppo_clip"):
        # verl 0.9.1 reads rollout_correction.loss_type only in its legacy trainer
        # (trainer/ppo/ray_trainer.py, apply_bypass_mode); the V1 trainer, RePO's, trains with
        # policy_loss.loss_mode, so the run would silently be PPO-clip
        raise ValueError(
            f"algorithm.rollout_correction.loss_type={loss_type} with bypass_mode=True: verl's V1 trainer, which "
            f"{mode} is, ignores loss_type (only verl's legacy trainer reads it) and would train with RePO's "
            "PPO-clip loss instead. Remove the override algorithm.rollout_correction.loss_type="
            f"{loss_type} (ppo_clip is what runs), or train without RePO."
        )


def is_distillation_on(config: DictConfig) -> bool:
    distillation = config.get("distillation", None)
    return bool(distillation is not None and distillation.get("enabled", False))


def check_resume_store(config: DictConfig, repo: RePOConfig, cwd: str | None = None) -> None:
    """Refuse to resume from a checkpoint without a replay store unless an empty store was asked for.

    The checkpoint is the one verl will resume from (``store_checkpoint.resumed_step_dir``, paths
    relative to ``cwd``, default the current directory, as verl resolves them).
    """
    try:
        step_dir = resumed_step_dir(config.trainer, cwd or os.getcwd())
    except ValueError as exc:  # verl reads the tracker with int(): empty after a kill while it was written
        raise ValueError(
            f"trainer.resume_mode={config.trainer.resume_mode}: verl's checkpoint tracker "
            f"latest_checkpointed_iteration.txt in trainer.default_local_dir={config.trainer.default_local_dir} is not "
            f"a step number ({exc}). Write the last complete step into it (the highest global_step_N with a "
            "data.pt), or set trainer.resume_mode=disable."
        ) from exc
    if step_dir is None or not os.path.isdir(step_dir):
        return  # a fresh start, or a resume_from_path verl itself will refuse
    decision = store_on_resume(
        has_store=has_store_state(step_dir),
        missing_store_on_resume=repo.missing_store_on_resume,
        strategy=repo.strategy,
    )
    if decision == "refuse":
        raise ValueError(
            f"trainer.resume_mode={config.trainer.resume_mode} resumes from {step_dir}, which has no RePO replay "
            f"store ({store_path(step_dir)}): a checkpoint of a run without RePO, e.g. GRPO. To warm-start RePO "
            f"from it with an empty store, set {STORE_ON_RESUME_SETTING}=empty (replay then starts as in a fresh "
            "run, counted from the resumed step); to start from scratch, set trainer.resume_mode=disable or "
            "another trainer.default_local_dir."
        )


def validate_trainer_config(config: DictConfig, repo: RePOConfig) -> None:
    """Every check of a RePO trainer launch that needs only the config (and the checkpoint folder).

    Run by :class:`RePOLaunchCheck` before Ray starts, and by the RePO trainer when it starts.
    """
    check_repo_trainer_requirements(config, repo)
    check_repo_wiring(config, repo)
    check_repo_batch_settings(config, repo)
    check_verl_features(config, repo)
    repo_sync_trainer_settings(config)
    check_resume_store(config, repo)


def warn_if_run_too_short_to_replay(config: DictConfig, repo: RePOConfig) -> None:
    """Warn at launch when ``trainer.total_training_steps`` ends the run before any prompt can be replayed.

    Without the dataset only a bound is known (:func:`~repo_ext.integration.replay_health.fewest_steps_to_replay`);
    the trainer prints the exact step once the dataset is loaded.
    """
    total = config.trainer.get("total_training_steps", None)
    if repo.strategy == "none" or total is None:
        return
    n = int(config.actor_rollout_ref.rollout.n)
    fewest = fewest_steps_to_replay(min_cache_to_replay=repo.min_cache_to_replay, rollout_n=n)
    if int(total) < fewest:
        logger.warning(
            "RePO: trainer.total_training_steps=%s ends the run before any replay: a prompt needs %d earlier visits "
            "(at most one per step) to hold algorithm.repo.min_cache_to_replay=%d responses at "
            "actor_rollout_ref.rollout.n=%d, so replay can start at step %d at the earliest (one visit per epoch: "
            "later). No row would be replayed and this run is plain GRPO at RePO's cost. Raise "
            "trainer.total_training_steps, lower algorithm.repo.min_cache_to_replay or raise "
            "actor_rollout_ref.rollout.n; or set algorithm.repo.strategy=none.",
            total, fewest - 1, repo.min_cache_to_replay, n, fewest,
        )


class RePOLaunchCheck(Callback):
    """Hydra callback: run RePO's start-up checks in the launching process, before Ray starts.

    Hydra runs it when the config lists it, e.g. in ``algorithm/repo.yaml``::

        hydra:
          callbacks:
            repo_launch_check:
              _target_: repo_ext.integration.config_checks.RePOLaunchCheck

    Then every launch that selects RePO is checked in seconds instead of after the Ray cluster and
    workers are up, including launches that swap RePO's trainer for another one.

    Hydra 1.3 runs callbacks inside ``except Exception`` and turns what they raise into a
    ``UserWarning``, then runs the job anyway (``hydra/_internal/callbacks.py``,
    ``Callbacks._notify``). So under Hydra (which passes ``task_function``) a refusal leaves as
    ``SystemExit``, which is not an ``Exception``: the process prints the message and exits with
    status 1. Called directly (tests, a program composing the config itself), the ValueError is raised.
    """

    def on_job_start(self, config: Any, *, task_function: Any = None, **kwargs: Any) -> None:
        try:
            self.check(config)
        except ValueError as exc:
            if task_function is None:
                raise
            raise SystemExit(f"RePO launch check: {exc}") from exc

    def check(self, config: Any) -> None:
        """Every check of the launch; raises ValueError naming the setting, its value and what would work."""
        repo = repo_config_from_algorithm(config.algorithm)
        check_entry_point(config, repo)
        check_repo_wiring(config, repo)
        if str(config.trainer.v1.get("trainer_mode", "sync")) == TRAINER_MODE:
            validate_trainer_config(config, repo)
            # algorithm.repo.skip_zero_advantage_rows=true where skipping would change the update (issue #14)
            resolve_skip_zero_advantage_rows(config, repo.skip_zero_advantage_rows)
            warn_if_run_too_short_to_replay(config, repo)
