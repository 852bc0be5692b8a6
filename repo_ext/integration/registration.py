"""Registers RePO into verl's registries; called once per process by ``repo_ext.plugin``."""

from __future__ import annotations

import warnings

from repo_ext.integration.on_import import call_after_import


def register() -> None:
    """Register ``repo_split``, ``repo`` and the ``repo_sync`` trainer. Idempotent."""
    from verl.trainer.ppo import core_algos

    from repo_ext.integration import estimators

    if core_algos.ADV_ESTIMATOR_REGISTRY.get(estimators.ADV_ESTIMATOR_NAME) is not estimators.compute_repo_split_advantage:
        core_algos.register_adv_est(estimators.ADV_ESTIMATOR_NAME)(estimators.compute_repo_split_advantage)
    core_algos.register_policy_loss(estimators.POLICY_LOSS_NAME)(estimators.compute_repo_policy_loss)

    # The trainer registers itself with verl's V1 trainer registry (a dict in trainer_base) when
    # imported; that import costs 1.4 s and tens of MiB, so it happens when verl imports
    # trainer_base (the TaskRunner does, to look the trainer up), not in every process.
    call_after_import(TRAINER_BASE_MODULE, _register_trainer)


TRAINER_BASE_MODULE = "verl.trainer.ppo.v1.trainer_base"


def _register_trainer(_trainer_base=None) -> None:
    # Importing the trainer imports verl's engine package, which warns once per optional backend
    # that is not installed (torchtitan, veomni, megatron, ...); a plain `import verl` does not, so
    # in every process that imports verl those warnings would be ours.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".* engine is not available")
        from repo_ext.integration import trainer  # noqa: F401
