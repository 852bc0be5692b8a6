"""What verl 0.9.1 needs on the ``cpu`` platform beyond the platform object itself.

Applied by :func:`apply` only when :func:`repo_ext.cpu.platform.cpu_platform_selected` is true, so a
host with an accelerator runs stock verl. Each item names the verl code it works around:

1. FSDP engines (``verl/workers/engine/fsdp/transformer_impl.py``: ``FSDPEngineWithLMHead`` and
   ``FSDPEngineWithValueHead``) are registered in verl's ``EngineRegistry`` for devices cuda/npu
   only. They are registered for ``cpu`` too, through the registry.
2. ``verl/utils/distributed.py: initialize_global_process_group_ray`` builds the backend string
   ``"cpu:gloo,<device>:<backend>"``, i.e. ``"cpu:gloo,cpu:gloo"`` on CPU, which torch rejects
   ("Duplicate device type cpu"). The function is wrapped to pass ``backend="cpu:gloo"`` when the
   caller gave none. (patch: verl has no hook for the backend string)
3. ``verl/workers/engine/fsdp/transformer_impl.py: FSDPEngine._build_fsdp_module`` gives the
   forward-only (reference) model ``CPUOffloadPolicy(pin_memory=True)``; pinning host memory
   needs an accelerator. The module's ``CPUOffloadPolicy`` name is rebound to a policy with
   ``pin_memory=False``. (patch: verl has no setting for it)
"""

from __future__ import annotations

import functools
import sys
import warnings

__all__ = ["apply"]

_applied = False


def _register_fsdp_engines() -> None:
    # Importing verl.workers.engine warns once per optional backend that is not installed
    # (torchtitan, veomni, megatron, ...); none of them runs on CPU, and since this import now
    # happens in every process that imports verl, the warnings would flood every Ray worker's log.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".* engine is not available")
        from verl.workers.engine.base import EngineRegistry
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine_cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        for backend in ("fsdp", "fsdp2"):
            registered = EngineRegistry._engines.get(model_type, {}).get(backend, {})
            if "cpu" not in registered:
                EngineRegistry.register(model_type=model_type, backend=backend, device="cpu")(engine_cls)


def _gloo_only_process_group() -> None:
    import verl.utils.distributed as verl_distributed

    original = verl_distributed.initialize_global_process_group_ray
    if getattr(original, "_repo_ext_cpu", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        # verl would build "cpu:gloo,cpu:gloo" on the cpu platform; gloo alone serves both.
        return original(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    initialize_global_process_group_ray._repo_ext_cpu = True
    verl_distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    # modules that already imported the name keep the old binding: rebind it there too
    for module_name in ("verl.workers.engine_workers",):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "initialize_global_process_group_ray"):
            module.initialize_global_process_group_ray = initialize_global_process_group_ray


def _unpinned_cpu_offload_policy() -> None:
    import verl.workers.engine.fsdp.transformer_impl as fsdp_impl

    original = fsdp_impl.CPUOffloadPolicy
    if original is None or getattr(original, "_repo_ext_cpu", False):
        return

    class UnpinnedCPUOffloadPolicy(original):
        """``CPUOffloadPolicy`` that never pins host memory (pinning needs an accelerator)."""

        _repo_ext_cpu = True

        def __init__(self, pin_memory: bool = False):
            super().__init__(pin_memory=False)

    fsdp_impl.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


def apply() -> None:
    """Apply the CPU-only workarounds listed in the module docstring (idempotent)."""
    global _applied
    if _applied:
        return
    from repo_ext.integration.on_import import call_after_import

    _gloo_only_process_group()
    # both need verl's FSDP engine module (with PEFT, ~0.5 s to import): done when verl imports it,
    # in the processes that build an engine, not in every process that imports verl
    call_after_import(FSDP_ENGINE_MODULE, _fsdp_engine_workarounds)
    _applied = True


FSDP_ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"


def _fsdp_engine_workarounds(_module=None) -> None:
    _register_fsdp_engines()
    _unpinned_cpu_offload_policy()
