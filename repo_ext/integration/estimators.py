"""RePO's entries in verl's registries: advantage estimator ``repo_split``, policy loss ``repo``.

verl's argument lists cannot carry RePO's per-row off-policy flag:

- an advantage estimator receives (token_level_rewards, response_mask, config, index=uid) only
  (verl/trainer/ppo/ray_trainer.py ``compute_advantage``). The RePO trainer therefore writes the flag
  into the uid of replayed rows (``<uid>::repo_replay``, see ``replay_rows``), and ``repo_split``
  reads it back from ``index``.
- a registered policy loss receives (old_log_prob, log_prob, advantages, response_mask,
  loss_agg_mode, config, rollout_is_weights) only (verl/workers/utils/losses.py ``ppo_loss`` selects
  those fields). The RePO trainer installs :class:`RePOLossFunction` on the actor workers with
  verl's ``set_loss_fn`` hook; it receives the whole micro-batch, reads the ``repo_off_policy``
  field, exposes it through a context variable, and then runs verl's own ``ppo_loss`` unchanged
  (entropy and KL terms included), which calls the registered ``repo`` loss below.

Used without the RePO trainer (no flags published), ``repo`` treats every row as on-policy, which
is exactly verl's vanilla PPO-clip loss.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from repo_ext.algorithm.advantages import group_advantages
from repo_ext.algorithm.config import RePOConfig
from repo_ext.algorithm.loss import MAX_METRICS, SUM_KEYS, mean_metrics_from_sums, repo_policy_loss
from repo_ext.integration.mini_batch_counts import MINI_BATCH_FIELD, NORM_ROWS_FIELD
from repo_ext.integration.entry_points import experimental_entry_point, experimental_entry_point_error
from repo_ext.integration.replay_rows import NORM_OFF_FIELD, NORM_ON_FIELD, OFF_POLICY_FIELD, split_uid
from repo_ext.integration.zero_adv_skip import apply_carried_normalisers, report_updated_rows_entropy

ADV_ESTIMATOR_NAME = "repo_split"
POLICY_LOSS_NAME = "repo"
#: the RePO trainer's name in verl's trainer registry (``trainer.v1.trainer_mode``; registered in ``trainer``)
TRAINER_MODE = "repo_sync"

logger = logging.getLogger(__name__)
# Set by the RePO trainer in its own process, the one that computes advantages (verl calls the
# estimator from the trainer). Without it, repo_split sees no replayed rows, ever.
_repo_trainer_running = False
_warned_without_trainer = False


def mark_repo_trainer_running() -> None:
    """Called by the RePO trainer: advantages in this process come with replayed rows."""
    global _repo_trainer_running
    _repo_trainer_running = True


def _warn_once_without_trainer(strategy: str) -> None:
    global _warned_without_trainer
    if _repo_trainer_running or strategy == "none":
        return
    entry = experimental_entry_point()
    if entry is not None:  # e.g. verl's fully-async trainer process: refuse, do not train plain GRPO
        raise experimental_entry_point_error(entry, f"algorithm.adv_estimator={ADV_ESTIMATOR_NAME} with algorithm.repo.strategy={strategy}")
    if _warned_without_trainer:
        return
    _warned_without_trainer = True
    logger.warning(
        "advantage estimator %r runs without the RePO trainer (trainer.v1.trainer_mode=repo_sync): no row is "
        "ever replayed, so algorithm.repo.strategy=%s has no effect and this is plain GRPO. Launch with "
        "algorithm=repo (or set trainer.v1.trainer_mode=repo_sync), or set algorithm.repo.strategy=none.",
        ADV_ESTIMATOR_NAME,
        strategy,
    )


def repo_config_from_algorithm(config: Any) -> RePOConfig:
    """The validated :class:`RePOConfig` from verl's raw ``algorithm`` config (or None: defaults)."""
    if config is None:
        return RePOConfig()
    repo = config.get("repo", None) if hasattr(config, "get") else getattr(config, "repo", None)
    if repo is None:
        return RePOConfig()
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(repo):
            repo = OmegaConf.to_container(repo, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with verl
        pass
    return RePOConfig.from_mapping(repo)  # from_mapping validates


def norm_adv_by_std_in_grpo(config: Any) -> bool:
    """verl's ``algorithm.norm_adv_by_std_in_grpo`` from its ``algorithm`` config (a DictConfig, verl's
    ``AlgoConfig`` or None), with verl's default (true) where it is not set. RePO has no switch of
    its own, so a GRPO baseline and RePO with the same config normalise alike."""
    if config is None:
        return True
    value = config.get("norm_adv_by_std_in_grpo", True)  # DictConfig and verl's BaseConfig both have get
    if not isinstance(value, bool):
        raise ValueError(f"algorithm.norm_adv_by_std_in_grpo={value!r} is invalid; it must be true or false")
    return value


def compute_repo_split_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    index: np.ndarray | None = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl advantage estimator ``repo_split``.

    Args:
        token_level_rewards: (B, T) rewards; a row's score is their sum.
        response_mask: (B, T).
        config: verl's ``algorithm`` config; RePO's settings come from ``algorithm.repo``, and
            whether a group's std divides its advantages from verl's own
            ``algorithm.norm_adv_by_std_in_grpo`` (default true; false is Dr. GRPO), the switch
            verl's ``grpo`` estimator reads.
        index: (B,) verl's uid per row; replayed rows end in ``::repo_replay``.

    Returns:
        (advantages, returns), both (B, T) and equal, zero outside the response.

    A row whose reward is NaN or infinite (a failed reward function) counts as reward 0, as the
    reference's ``nansum`` over reward functions does; the trainer counts such rows
    (``repo/bad_rows_nonfinite_reward``) and never stores them. Without this one such row would
    make the whole mini-batch's gradient NaN, and verl would skip the update.
    """
    if index is None:
        raise ValueError(
            "advantage estimator 'repo_split' needs verl's per-row uid (index) to group rows by prompt; "
            "verl passes it whenever the batch has a 'uid' field"
        )
    cfg = repo_config_from_algorithm(config)
    _warn_once_without_trainer(cfg.strategy)
    groups, off = zip(*(split_uid(str(u)) for u in index), strict=True) if len(index) else ((), ())
    scores = token_level_rewards.sum(dim=-1)
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        scores = torch.where(finite, scores, torch.zeros_like(scores))
    advantages = group_advantages(
        scores,
        list(groups),
        torch.tensor(off, dtype=torch.bool),
        mode=cfg.advantage_mode,
        norm_by_std=norm_adv_by_std_in_grpo(config),
        epsilon=cfg.epsilon,
    )
    advantages = advantages.unsqueeze(-1) * response_mask
    return advantages, advantages


@dataclass(frozen=True)
class _RowFlags:
    off_policy: torch.Tensor  # (B,) bool
    norm_on: float | None
    norm_off: float | None
    weighting: str
    off_policy_loss_coef: float


_CURRENT_ROWS: contextvars.ContextVar[_RowFlags | None] = contextvars.ContextVar("repo_rows", default=None)


def compute_repo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl policy loss ``repo`` (see the module docstring for where the off-policy flags come from).

    Shapes: all (B, T). ``old_log_prob`` holds the stored behaviour log-probs on replayed rows.
    """
    rows = _CURRENT_ROWS.get()
    batch = log_prob.shape[0]
    if rows is None:
        off_policy = torch.zeros(batch, dtype=torch.bool, device=log_prob.device)
        weighting, coef, norm_on, norm_off = "reference", 1.0, None, None
    else:
        if rows.off_policy.shape[0] != batch:
            raise RuntimeError(
                f"RePO loss: {rows.off_policy.shape[0]} off-policy flags for a micro-batch of {batch} rows"
            )
        off_policy = rows.off_policy.to(log_prob.device)
        weighting, coef, norm_on, norm_off = rows.weighting, rows.off_policy_loss_coef, rows.norm_on, rows.norm_off

    clip = config.clip_ratio
    info = dict(getattr(config, "global_batch_info", {}) or {})
    dp_size = int(info.get("dp_size", 1) or 1)
    kwargs: dict[str, Any] = {}
    if weighting == "paper" and norm_on is not None:
        # normalisers are global (all dp ranks) counts, like verl's global_batch_size
        if loss_agg_mode.startswith("token"):
            raise ValueError(
                "algorithm.repo.loss_weighting=paper needs a per-sequence loss_agg_mode "
                f"(seq-mean-token-mean), got actor.loss_agg_mode={loss_agg_mode!r}"
            )
        kwargs.update(num_on_rows=norm_on, num_off_rows=norm_off)
    loss, metrics = repo_policy_loss(
        log_prob,
        old_log_prob,
        advantages,
        response_mask,
        off_policy,
        clip_ratio_low=config.clip_ratio_low if config.clip_ratio_low is not None else clip,
        clip_ratio_high=config.clip_ratio_high if config.clip_ratio_high is not None else clip,
        clip_ratio_c=config.get("clip_ratio_c", 3.0) if hasattr(config, "get") else 3.0,
        weighting=weighting,
        off_policy_loss_coef=coef,
        loss_agg_mode=loss_agg_mode,
        dp_size=dp_size,
        global_batch_size=info.get("global_batch_size"),
        batch_num_tokens=info.get("batch_num_tokens"),
        loss_scale_factor=info.get("loss_scale_factor"),
        rollout_is_weights=rollout_is_weights,
        **kwargs,
    )
    if rows is None:
        # Nothing divides the sums later (no RePO trainer): per-micro-batch means, and the same keys
        # from every micro-batch (verl's dp aggregation needs that); every row is on-policy here.
        means = mean_metrics_from_sums(metrics)
        metrics = {key: value for key, value in means.items() if not key.startswith("repo/off_")}
        for key in ("repo/on_policy_loss", "repo/on_clipfrac", "repo/nonzero_adv_row_frac"):
            metrics.setdefault(key, 0.0)
    return loss, metrics


class RePOLossFunction:
    """The actor's loss function, installed with verl's ``set_loss_fn`` by the RePO trainer.

    Picklable (it travels to every actor worker). Calls verl's ``ppo_loss`` with the worker-side
    ``ActorConfig`` built from the same config the worker uses, after publishing this micro-batch's
    off-policy flags for the registered ``repo`` policy loss.
    """

    def __init__(self, actor_config: Any, repo_config: RePOConfig):
        self.actor_config = actor_config
        self.repo_config = repo_config

    def __call__(self, model_output: Any, data: Any, dp_group: Any = None):
        from verl.workers.utils.losses import ppo_loss

        if OFF_POLICY_FIELD not in data.keys():
            raise RuntimeError(
                f"RePO loss: the micro-batch has no '{OFF_POLICY_FIELD}' field; the RePO trainer writes it on "
                "every row. Was the batch built by verl's stock trainer with loss_mode=repo's set_loss_fn?"
            )
        off = torch.as_tensor(data[OFF_POLICY_FIELD]).reshape(-1).to(torch.bool)
        norm_on = norm_off = None
        if NORM_ON_FIELD in data.keys():
            norm_on = float(torch.as_tensor(data[NORM_ON_FIELD]).reshape(-1)[0])
            norm_off = float(torch.as_tensor(data[NORM_OFF_FIELD]).reshape(-1)[0])
        flags = _RowFlags(
            off_policy=off,
            norm_on=norm_on,
            norm_off=norm_off,
            weighting=self.repo_config.loss_weighting,
            off_policy_loss_coef=self.repo_config.off_policy_loss_coef,
        )
        apply_carried_normalisers(data)  # zero-advantage rows skipped: the normalisers as if they were there
        if NORM_ROWS_FIELD in data.keys():
            self._use_real_row_count(data)
        token = _CURRENT_ROWS.set(flags)
        try:
            loss, metrics = ppo_loss(self.actor_config, model_output, data, dp_group)
        finally:
            _CURRENT_ROWS.reset(token)
        report_updated_rows_entropy(model_output, data, metrics)  # skipped rows: no entropy_loss over them
        return loss, _retag_sum_metrics(metrics)

    @staticmethod
    def _use_real_row_count(data: Any) -> None:
        """verl's ``global_batch_size`` counts padding rows; replace it, for this micro-batch, by the rows
        with a valid token in its mini-batch over all ranks (``mini_batch_counts``), so that verl's
        ppo_loss divides every seq-mean-* term (policy, entropy, KL) by real rows."""
        from verl.utils import tensordict_utils as tu

        mini_batches = set(torch.as_tensor(data[MINI_BATCH_FIELD]).reshape(-1).tolist())
        if len(mini_batches) > 1:
            raise RuntimeError(
                f"RePO loss: one micro-batch holds rows of mini-batches {sorted(mini_batches)}; the trainer's "
                "view of verl's mini-batch layout (repo_ext/integration/mini_batch_counts.py) no longer matches "
                "verl's, so the loss normalisers would be wrong"
            )
        real_rows = float(torch.as_tensor(data[NORM_ROWS_FIELD]).reshape(-1)[0])
        if real_rows > 0 and "global_batch_size" in data.keys():
            tu.assign_non_tensor(data, global_batch_size=real_rows)


def _retag_sum_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """verl wraps every policy-loss metric as a MEAN ``Metric``; the sums and counts of
    :data:`~repo_ext.algorithm.loss.SUM_KEYS` are summed over micro-batches (``AggregationType.SUM``),
    the maxima maximised, so that the trainer's one division gives the step's exact means."""
    from verl.utils.metric import AggregationType, Metric

    def retag(value: Any, aggregation: AggregationType) -> Metric:
        out = Metric(aggregation)
        out.extend(value.values if isinstance(value, Metric) else [value])
        return out

    for key in SUM_KEYS:
        if key in metrics:
            metrics[key] = retag(metrics[key], AggregationType.SUM)
    for key in MAX_METRICS:
        if key in metrics:
            metrics[key] = retag(metrics[key], AggregationType.MAX)
    return metrics
