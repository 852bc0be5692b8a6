"""Running verl 0.9.1 on a machine without an accelerator. Independent of RePO.

:func:`register` (called by the ``verl.plugins`` entry point ``repo_ext.plugin`` in every process
that imports verl) registers:

- the ``cpu`` platform with verl's ``PlatformRegistry`` (``repo_ext.cpu.platform``), selected only
  by the opt-in ``VERL_PLATFORM=cpu``, which ``+preset=cpu`` sets in every process of a run
  (``repo_ext.cpu.opt_in``); never by auto-detection;
- when that platform is the one selected: FSDP engines for device ``cpu``, gloo-only process
  groups and unpinned CPU offload (``repo_ext.cpu.verl_workarounds``, each naming the verl code
  it works around). On a host with an accelerator none of these apply;
- the rollout backend ``hf_cpu`` (HF ``generate``) with verl's rollout registries
  (``repo_ext.cpu.hf_rollout``). It takes effect only when a run sets
  ``actor_rollout_ref.rollout.name=hf_cpu``.

Users select everything with the Hydra preset ``+preset=cpu`` (``repo_ext/config/preset/cpu.yaml``).
"""

from __future__ import annotations

__all__ = ["register", "ROLLOUT_NAME"]

ROLLOUT_NAME = "hf_cpu"


def _register_rollout() -> None:
    # verl's rollout registries live in modules that import its HTTP servers (fastapi, ~0.6 s): the
    # entries are added when verl imports them, in the processes that start or call a rollout
    from repo_ext.integration.on_import import call_after_import

    call_after_import("verl.workers.rollout.base", _register_rollout_adapter)
    call_after_import("verl.workers.rollout.replica", _register_rollout_replica)


def _register_rollout_adapter(rollout_base) -> None:
    # verl keeps the adapter registry as a plain dict without a register function
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "repo_ext.cpu.hf_rollout.HFServerAdapter"


def _register_rollout_replica(replica) -> None:
    if ROLLOUT_NAME not in replica.RolloutReplicaRegistry._registry:
        replica.RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)


def _load_replica():
    from repo_ext.cpu.hf_rollout import HFRolloutReplica

    return HFRolloutReplica


def register() -> None:
    """Register the CPU platform, its verl workarounds (opted-in processes only) and the ``hf_cpu`` rollout.

    Idempotent; cheap in processes without the opt-in.
    """
    from repo_ext.cpu.platform import cpu_platform_selected, register_platform

    register_platform()
    _register_rollout()
    if cpu_platform_selected():
        from repo_ext.cpu import verl_workarounds

        verl_workarounds.apply()


# Import verl last, after `register` exists: a first import of a submodule such as
# `repo_ext.cpu.platform` (which subclasses verl's PlatformBase) then loads verl here, and verl's
# plugin loading calls `register()`, which imports that submodule completely, instead of verl
# re-entering a half-imported `repo_ext.cpu.platform` and failing with a circular import.
import verl  # noqa: E402, F401
