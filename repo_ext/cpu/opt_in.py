"""Opting in to the ``cpu`` platform: ``VERL_PLATFORM=cpu`` in every process of a run.

The CPU platform is never auto-detected (``repo_ext.cpu.platform``). A run opts in with either

- ``VERL_PLATFORM=cpu`` in the launching shell: verl's own override; a local Ray cluster started
  by the launcher inherits it; or
- ``+preset=cpu`` (``repo_ext/config/preset/cpu.yaml``), which needs no environment variable:

  - Ray workers (task runner, training workers, rollout, reward): the preset puts
    ``VERL_PLATFORM: cpu`` into ``ray_kwargs.ray_init.runtime_env.env_vars``, which verl merges
    into the runtime environment of ``ray.init`` (verl/trainer/main_ppo.py ``run_ppo``), so
    every actor of the job starts with it, on a cluster started elsewhere too;
  - the launching process: verl chose its platform when ``verl.trainer.main_ppo`` was imported,
    before Hydra read the preset, and ``auto_set_device`` would then rewrite
    ``trainer.device=cpu`` to that platform's device (and the task runner would refuse the
    mismatch). The preset's Hydra callback :class:`CPUPlatformOptIn` runs before verl's ``main``
    and switches this process to the CPU platform.

The same callback gives the training workers their threads: Ray sets ``OMP_NUM_THREADS`` to an
actor's ``num_cpus`` (1 for verl's workers) wherever the variable is unset, so a CPU actor would
train on one core whatever the machine has (measured here: the actor update of a 32-row step ran
at 100% of one core of two). Unless the launching shell sets it, the callback sets
``OMP_NUM_THREADS`` = usable CPUs (affinity mask, cgroup quota: ``repo_ext.machine``) // training processes per node (:func:`worker_threads`) before verl
starts Ray; a local Ray cluster's workers inherit it.
"""

from __future__ import annotations

import os
from typing import Any

from hydra.experimental.callback import Callback

from repo_ext.machine import usable_cpus
from repo_ext.cpu.platform import CPU_PLATFORM_NAME, PLATFORM_ENV, PlatformCPU


def select_cpu_platform() -> None:
    """Make this process run verl on the ``cpu`` platform (idempotent), even if verl chose before."""
    from verl.plugin.platform import get_platform, set_platform

    from repo_ext.cpu import verl_workarounds

    os.environ[PLATFORM_ENV] = CPU_PLATFORM_NAME
    if not isinstance(get_platform(), PlatformCPU):
        set_platform(PlatformCPU())
    verl_workarounds.apply()


THREADS_ENV = "OMP_NUM_THREADS"


def worker_threads(cpu_count: int | None, processes_per_node: int) -> int:
    """Torch threads per training process: the node's cores shared by its training processes, >= 1."""
    return max(1, (cpu_count or 1) // max(1, processes_per_node))


def set_worker_threads(config: Any) -> None:
    """``OMP_NUM_THREADS`` for the run's Ray workers, unless the launching shell chose it."""
    if THREADS_ENV in os.environ:
        return
    per_node = int(config.trainer.n_gpus_per_node) if "trainer" in config else 1
    # the CPUs this process may run on (affinity, cgroup quota), not the machine's: in a container
    # os.cpu_count() would oversubscribe
    os.environ[THREADS_ENV] = str(worker_threads(usable_cpus(), per_node))


class CPUPlatformOptIn(Callback):
    """Hydra callback of ``+preset=cpu``: the launching process opts in to the CPU platform.

    Listed in the preset as::

        hydra:
          callbacks:
            cpu_platform:
              _target_: repo_ext.cpu.opt_in.CPUPlatformOptIn
    """

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        select_cpu_platform()
        set_worker_threads(config)
