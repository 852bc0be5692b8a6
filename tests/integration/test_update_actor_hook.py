"""The update hook hands verl's worker what verl's own ``_update_actor`` hands it.

``hooks.update_actor.verl_update_actor`` stands in for verl's ``PPOTrainer._update_actor``
(verl/trainer/ppo/v1/trainer_base.py) with the mini-batch rows and shuffling passed as values
instead of read from the config. With verl's values (``ppo_mini_batch_size * rollout.n`` and
``actor.shuffle``) the batch's ``extra_info`` and the metrics must be exactly verl's; with other
values only those keys differ, and the config is left as it was. A verl upgrade that adds a key
to its ``extra_info`` fails here.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from repo_ext.integration.hooks.update_actor import verl_update_actor


class RecordingGroup:
    """verl's actor worker group: records the batch's extra_info, returns fixed worker metrics."""

    def __init__(self):
        self.seen: list[dict] = []

    def update_actor(self, batch: KVBatchMeta):
        self.seen.append(copy.deepcopy(batch.extra_info))
        return {"metrics": {"mfu": [0.25, 0.75], "pg_loss": [1.0, 3.0]}}


def _trainer(shuffle: bool, entropy_coeff: float) -> SimpleNamespace:
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "actor": {
                    "ppo_mini_batch_size": 3,
                    "ppo_epochs": 2,
                    "data_loader_seed": 7,
                    "shuffle": shuffle,
                    "calculate_entropy": False,
                    "entropy_coeff": entropy_coeff,
                },
                "rollout": {"n": 4, "temperature": 0.9},
            },
            "distillation": {"enabled": False},
        }
    )
    return SimpleNamespace(config=config, actor_rollout_wg=RecordingGroup())


def _batch() -> KVBatchMeta:
    return KVBatchMeta(keys=["a", "b"], tags=[{}, {}], partition_id="train", fields=None, extra_info={"kept": 1})


@pytest.mark.parametrize(("shuffle", "entropy_coeff"), [(False, 0.0), (True, 0.01)])
def test_with_verls_values_the_worker_sees_exactly_verls_update(shuffle, entropy_coeff):
    verl_trainer, ours = _trainer(shuffle, entropy_coeff), _trainer(shuffle, entropy_coeff)
    verl_metrics, our_metrics = {}, {}
    PPOTrainer._update_actor(verl_trainer, _batch(), verl_metrics)
    verl_update_actor(ours, _batch(), our_metrics, mini_batch_rows=3 * 4, shuffle=shuffle)
    assert ours.actor_rollout_wg.seen == verl_trainer.actor_rollout_wg.seen
    assert our_metrics == verl_metrics == {"actor/pg_loss": 2.0, "perf/mfu/actor": 0.5}


def test_other_values_change_only_the_mini_batch_keys_and_never_the_config():
    verl_trainer, ours = _trainer(True, 0.0), _trainer(True, 0.0)
    before = OmegaConf.to_container(ours.config)
    PPOTrainer._update_actor(verl_trainer, _batch(), {})
    verl_update_actor(ours, _batch(), {}, mini_batch_rows=20, shuffle=False)
    [verl_info], [our_info] = verl_trainer.actor_rollout_wg.seen, ours.actor_rollout_wg.seen
    changed = {key for key in verl_info if verl_info[key] != our_info[key]}
    assert changed == {"global_batch_size", "mini_batch_size", "dataloader_kwargs"}
    assert our_info["global_batch_size"] == our_info["mini_batch_size"] == 20
    assert our_info["dataloader_kwargs"] == {"shuffle": False}
    assert OmegaConf.to_container(ours.config) == before
