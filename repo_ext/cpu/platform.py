"""verl's ``cpu`` platform: run verl's trainer without an accelerator.

verl 0.9.1 reaches the device only through ``verl.plugin.platform.get_platform()`` (wrapped by
``verl.utils.device``). With no accelerator it falls back to "nvidia" (platform_manager.py
``_detect_platform_name``) and fails on the first ``torch.cuda`` call. :class:`PlatformCPU` is
registered under the name ``cpu`` and is **opt-in**: verl selects it only with ``VERL_PLATFORM=cpu``
(which ``+preset=cpu`` sets in the launching process and in every Ray worker, see
``repo_ext.cpu.opt_in``). It never answers verl's auto-detection, so a process without the opt-in,
e.g. the Ray head or task runner of a GPU cluster on a CPU-only node, gets verl's own choice.
"""

from __future__ import annotations

import os
import resource
import types
from contextlib import contextmanager
from typing import Any, Optional

import psutil
import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

from repo_ext.cpu.malloc import return_free_memory

__all__ = ["PlatformCPU", "CPU_PLATFORM_NAME", "cpu_platform_selected", "cpu_device_module"]

CPU_PLATFORM_NAME = "cpu"


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _make_device_module() -> types.ModuleType:
    """A stand-in for ``torch.cuda`` with the functions verl calls on ``get_torch_device()``.

    ``torch.cpu`` provides streams, events, synchronize and device counts; the memory and RNG
    functions verl also calls (``empty_cache``, ``mem_get_info``, ``max_memory_allocated``,
    ``get_rng_state`` in checkpointing, ...) are mapped to process memory and the CPU generator.
    Memory "allocated" is the process RSS, "max allocated" its peak RSS.
    """
    module = types.ModuleType("repo_ext_cpu_device")
    for name in ("Stream", "Event", "StreamContext", "current_stream", "stream", "synchronize", "is_available"):
        setattr(module, name, getattr(torch.cpu, name))

    def device_count() -> int:
        return 1

    def current_device() -> str:
        return "cpu"

    def set_device(device: Any) -> None:
        return None

    def empty_cache() -> None:
        # the CPU's "cache" is glibc's free lists: hand their pages back (verl calls this after updates
        # and weight syncs, where a GPU run returns cached blocks)
        return_free_memory()

    def ipc_collect() -> None:
        return None

    def memory_allocated(device: Any = None) -> int:
        return psutil.Process().memory_info().rss

    def max_memory_allocated(device: Any = None) -> int:
        return max(_peak_rss_bytes(), memory_allocated())

    def mem_get_info(device: Any = None) -> tuple[int, int]:
        vm = psutil.virtual_memory()
        return vm.available, vm.total

    def reset_peak_memory_stats(device: Any = None) -> None:
        return None

    def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
        return None

    def get_device_name(device: Any = None) -> str:
        return "cpu"

    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    module.device_count = device_count
    module.current_device = current_device
    module.set_device = set_device
    module.empty_cache = empty_cache
    module.ipc_collect = ipc_collect
    module.memory_allocated = memory_allocated
    module.memory_reserved = memory_allocated
    module.max_memory_allocated = max_memory_allocated
    module.max_memory_reserved = max_memory_allocated
    module.mem_get_info = mem_get_info
    module.reset_peak_memory_stats = reset_peak_memory_stats
    module.set_per_process_memory_fraction = set_per_process_memory_fraction
    module.get_device_name = get_device_name
    module.get_rng_state = get_rng_state
    module.set_rng_state = set_rng_state
    module.manual_seed = manual_seed
    module.manual_seed_all = manual_seed
    return module


cpu_device_module = _make_device_module()


#: verl's platform override (verl/plugin/platform/platform_manager.py ``_detect_platform_name``)
PLATFORM_ENV = "VERL_PLATFORM"


def cpu_platform_selected() -> bool:
    """Whether this process opted in to the ``cpu`` platform: ``VERL_PLATFORM=cpu``.

    Every CPU-only change of verl's behaviour in ``repo_ext.cpu`` is gated on this, so a process
    without the opt-in sees stock verl, whatever hardware it runs on.
    """
    return os.environ.get(PLATFORM_ENV, "").strip().lower() == CPU_PLATFORM_NAME


class PlatformCPU(PlatformBase):
    """verl platform for a host without an accelerator: device ``cpu``, collectives over gloo.

    Ray still schedules verl's workers on "GPU" resources (verl's resource pools always request
    them), so a CPU run gives Ray pseudo-GPUs (``ray_init.num_gpus``); the preset
    ``+preset=cpu`` does that.
    """

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return cpu_device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # verl's auto-detection (no VERL_PLATFORM) probes every registered platform: the CPU
        # platform is opt-in only, so it never claims a process on its own.
        return False

    def current_device(self) -> str:  # type: ignore[override]
        # verl moves tensors with `.to(get_device_id())`; an int would mean "cuda:<int>".
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return_free_memory()

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES for actors holding pseudo-GPUs; the CPU build of torch ignores it.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def register_platform() -> None:
    """Register :class:`PlatformCPU` as ``cpu`` (idempotent)."""
    if PlatformRegistry.get(CPU_PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=CPU_PLATFORM_NAME)(PlatformCPU)
