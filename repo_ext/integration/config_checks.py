"""Start-up checks: RePO settings combined with verl settings that cannot work fail before training.

Single RePO values are validated by :class:`~repo_ext.algorithm.config.RePOConfig`; this module
checks combinations with the rest of verl's config. Every error names the setting, its value and
what would work. Two callers:

- :func:`repo_ext.integration.trainer.validate_trainer_config`, when the RePO trainer starts;
- :class:`RePOLaunchCheck`, a Hydra callback in the launching process, before Ray starts. It also
  catches RePO's estimator or loss selected WITHOUT the RePO trainer: that run has no replay store,
  so the RePO trainer cannot report it (it never runs).
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from repo_ext.algorithm.config import RePOConfig
from repo_ext.integration.estimators import ADV_ESTIMATOR_NAME, POLICY_LOSS_NAME, repo_config_from_algorithm

#: bytes one stored response token takes (int32 id + float32 behaviour log-prob)
STORE_BYTES_PER_TOKEN = 8


def check_repo_wiring(config: DictConfig, repo: RePOConfig) -> None:
    """When RePO's estimator or loss is selected with replay on, the trainer that runs is RePO's.

    Raises ValueError when ``repo_split`` or ``repo`` is selected with a trainer that has no replay
    store (replay configured, nothing ever replayed), and when ``trainer_mode=repo_sync`` is set
    but verl's legacy trainer (``trainer.use_v1=False``), which ignores it, would run.
    """
    repo_mode = _repo_trainer_mode()
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
            f"trainer.v1.trainer_mode={repo_mode} (or launch with +algorithm=repo), or set "
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
    one_response = STORE_BYTES_PER_TOKEN * max_response_length
    if repo.strategy != "none" and repo.max_store_bytes is not None and repo.max_store_bytes < one_response:
        raise ValueError(
            f"algorithm.repo.max_store_bytes={repo.max_store_bytes} cannot hold one response of "
            f"data.max_response_length={max_response_length} tokens ({STORE_BYTES_PER_TOKEN} bytes per token: "
            f"{one_response} bytes). Use max_store_bytes >= {one_response}; for replay to reach the gate it must "
            f"hold min_cache_to_replay={repo.min_cache_to_replay} responses of every prompt of an epoch, or null "
            "for no cap."
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
    """

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        repo = repo_config_from_algorithm(config.algorithm)
        check_repo_wiring(config, repo)
        if str(config.trainer.v1.get("trainer_mode", "sync")) == _repo_trainer_mode():
            check_repo_batch_settings(config, repo)


def _repo_trainer_mode() -> str:
    # the trainer module imports this one; registration imports the trainer in every verl process
    from repo_ext.integration.trainer import TRAINER_MODE

    return TRAINER_MODE
