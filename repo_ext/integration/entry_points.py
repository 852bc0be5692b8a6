"""Which verl entry point is running: RePO replays only under ``python -m verl.trainer.main_ppo``.

verl 0.9.1 ships experimental asynchronous entry points with trainers of their own:

- ``python -m verl.experimental.fully_async_policy.fully_async_main`` (``FullyAsyncTrainer``);
- ``python -m verl.experimental.one_step_off_policy.main_ppo`` (``OneStepOffRayTrainer``).

Neither looks at ``trainer.v1.trainer_mode``, so the RePO trainer (and its replay store) never runs
there; RePO's estimator and loss would still be found in verl's registries and the run would
train plain GRPO. They are recognised here by what they leave behind: the launching module, the
sections their configs add (``async_training``; a top-level ``rollout`` section for the separate
rollout resources), and, in their Ray workers, their trainer modules being imported.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

SUPPORTED_ENTRY_POINT = "python -m verl.trainer.main_ppo"

FULLY_ASYNC = "fully-async policy (python -m verl.experimental.fully_async_policy.fully_async_main)"
ONE_STEP_OFF = "one-step-off-policy (python -m verl.experimental.one_step_off_policy.main_ppo)"

#: the launching modules of the experimental entry points
ENTRY_MODULES = {
    "verl.experimental.fully_async_policy.fully_async_main": FULLY_ASYNC,
    "verl.experimental.one_step_off_policy.main_ppo": ONE_STEP_OFF,
}
#: modules only those entry points import: present in their trainer processes (Ray workers)
TRAINER_MODULES = {
    "verl.experimental.fully_async_policy.fully_async_trainer": FULLY_ASYNC,
    "verl.experimental.fully_async_policy.fully_async_main": FULLY_ASYNC,
    "verl.experimental.one_step_off_policy.ray_trainer": ONE_STEP_OFF,
    "verl.experimental.one_step_off_policy.main_ppo": ONE_STEP_OFF,
}


def _main_module_name(main: ModuleType | None) -> str | None:
    if main is None:
        return None
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    path = str(getattr(main, "__file__", "") or "").replace("\\", "/")
    for module in ENTRY_MODULES:  # run as a script path instead of with -m
        if path.endswith(module.replace(".", "/") + ".py"):
            return module
    return None


def experimental_entry_point(
    config: Any = None,
    main_module: ModuleType | None = None,
    loaded_modules: Mapping[str, Any] | None = None,
) -> str | None:
    """The experimental entry point this process belongs to (a description), or None.

    Args:
        config: the launch's full config, if known (``async_training`` or a top-level ``rollout``
            section mark the experimental configs; verl's ``ppo_trainer`` has neither).
        main_module: the process's ``__main__`` module (default: ``sys.modules["__main__"]``).
        loaded_modules: the process's imported modules (default: ``sys.modules``).
    """
    main_module = sys.modules.get("__main__") if main_module is None else main_module
    loaded_modules = sys.modules if loaded_modules is None else loaded_modules
    name = _main_module_name(main_module)
    if name in ENTRY_MODULES:
        return ENTRY_MODULES[name]
    if config is not None and hasattr(config, "get"):
        if config.get("async_training", None) is not None:
            return FULLY_ASYNC
        if config.get("rollout", None) is not None:
            return ONE_STEP_OFF
    for module, description in TRAINER_MODULES.items():
        if module in loaded_modules:
            return description
    return None


def experimental_entry_point_error(entry_point: str, selected: str) -> ValueError:
    """The error for RePO (``selected``: the settings that ask for replay) under ``entry_point``."""
    return ValueError(
        f"{selected} under verl's experimental {entry_point} entry point: that entry point runs its own "
        "trainer, never the RePO trainer, so no row would be replayed and this would silently train "
        f"plain GRPO. RePO replays only under `{SUPPORTED_ENTRY_POINT} algorithm=repo` (verl's V1 "
        "trainer with trainer.v1.trainer_mode=repo_sync). Launch that way, or set algorithm.repo.strategy=none "
        "to run plain GRPO on purpose."
    )
