"""What several test files compose: a small valid RePO launch on verl's stock config.

Importable from every test as ``from launch_config import ...`` (``pythonpath = ["tests"]`` in
pyproject.toml's pytest settings).
"""

from __future__ import annotations

import os

import verl
from hydra import compose, initialize_config_dir

VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")

#: a small, valid RePO launch on verl's ``ppo_trainer`` (the tiny CPU runs' batch settings)
SMALL_REPO_LAUNCH = (
    "algorithm=repo",
    "data.train_batch_size=4",
    "data.max_response_length=16",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "algorithm.repo.num_replays=2",
    "algorithm.repo.min_cache_to_replay=2",
    "algorithm.repo.max_cache_size=4",
)


def compose_verl(overrides, name="ppo_trainer", config_dir=VERL_CONFIG_DIR, hydra=False):
    """verl's config ``name`` composed by Hydra with ``overrides``, as ``main_ppo`` would."""
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra)
