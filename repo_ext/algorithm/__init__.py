"""RePO as pure torch/numpy code: replay store, retrieval strategies, advantages, loss, config.

No verl, Ray or Hydra import here; ``repo_ext.integration`` binds these to verl.

- :mod:`~repo_ext.algorithm.store`: :class:`ReplayStore`, :class:`ReplayEntry`.
- :mod:`~repo_ext.algorithm.loss_mask`: a stored response's loss mask at one bit per token.
- :mod:`~repo_ext.algorithm.retrieval`: :data:`STRATEGIES`, :func:`select_replay_indices`.
- :mod:`~repo_ext.algorithm.advantages`: :func:`group_advantages` (split / mixed).
- :mod:`~repo_ext.algorithm.loss`: :func:`repo_policy_loss`.
- :mod:`~repo_ext.algorithm.config`: :class:`RePOConfig` (mirrors ``config/algorithm/repo.yaml``).
"""

from repo_ext.algorithm.advantages import (
    ADVANTAGE_MODES,
    broadcast_to_tokens,
    group_advantages,
    nonzero_advantage_group_fraction,
)
from repo_ext.algorithm.config import RePOConfig
from repo_ext.algorithm.loss import LOSS_AGG_MODES, LOSS_WEIGHTINGS, aggregate_token_losses, repo_policy_loss
from repo_ext.algorithm.retrieval import STRATEGIES, max_variance_subset, select_replay_indices
from repo_ext.algorithm.store import ReplayEntry, ReplayStore

__all__ = [
    "ADVANTAGE_MODES",
    "LOSS_AGG_MODES",
    "LOSS_WEIGHTINGS",
    "STRATEGIES",
    "RePOConfig",
    "ReplayEntry",
    "ReplayStore",
    "aggregate_token_losses",
    "broadcast_to_tokens",
    "group_advantages",
    "max_variance_subset",
    "nonzero_advantage_group_fraction",
    "repo_policy_loss",
    "select_replay_indices",
]
