"""repo_ext.cpu registration: the cpu platform and its workarounds on a CPU host, and none of
them when another platform is selected (what a GPU user sees)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.timeout(180)


def _run_python(code: str, **env) -> dict:
    run_env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    run_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=run_env, timeout=150
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cpu_platform_is_auto_selected_with_engines_and_rollout_registered():
    import verl  # noqa: F401 - loads the plugin
    from verl.plugin.platform import get_platform
    from verl.utils.device import get_device_id, get_device_name, get_nccl_backend, get_resource_name
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class

    from repo_ext.cpu import register
    from repo_ext.cpu.hf_rollout import HFRolloutReplica, HFServerAdapter
    from repo_ext.cpu.platform import PlatformCPU

    register()  # idempotent: a second call must not raise
    assert isinstance(get_platform(), PlatformCPU)
    assert (get_device_name(), get_device_id(), get_nccl_backend(), get_resource_name()) == ("cpu", "cpu", "gloo", "GPU")
    for backend in ("fsdp", "fsdp2"):
        assert EngineRegistry._engines["language_model"][backend]["cpu"] is FSDPEngineWithLMHead
        assert EngineRegistry._engines["value_model"][backend]["cpu"] is FSDPEngineWithValueHead
    assert get_rollout_class("hf_cpu", "async") is HFServerAdapter
    assert get_rollout_replica_class("hf_cpu") is HFRolloutReplica


def test_device_module_stands_in_for_torch_cuda():
    from repo_ext.cpu.platform import cpu_device_module as dev

    assert dev.max_memory_allocated() >= dev.memory_allocated() > 10 * 2**20  # this process holds torch
    free, total = dev.mem_get_info()
    assert 0 < free <= total
    state = dev.get_rng_state()
    first = torch.rand(3)
    dev.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
    dev.empty_cache()
    dev.synchronize()
    assert dev.current_device() == "cpu" and dev.device_count() == 1


def test_another_platform_selected_means_stock_verl():
    # VERL_PLATFORM=nvidia stands in for a GPU host: no CPU workaround may be active there
    out = _run_python(
        """
        import json, verl
        import verl.utils.distributed as dist
        import verl.workers.engine.fsdp.transformer_impl as impl
        from verl.workers.engine.base import EngineRegistry
        from verl.plugin.platform import PlatformRegistry
        print(json.dumps({
            "cpu_registered": PlatformRegistry.get("cpu") is not None,
            "cpu_engine": "cpu" in EngineRegistry._engines["language_model"]["fsdp2"],
            "pg_wrapped": getattr(dist.initialize_global_process_group_ray, "_repo_ext_cpu", False),
            "offload_patched": getattr(impl.CPUOffloadPolicy, "_repo_ext_cpu", False),
        }))
        """,
        VERL_PLATFORM="nvidia",
    )
    assert out == {"cpu_registered": True, "cpu_engine": False, "pg_wrapped": False, "offload_patched": False}


def test_verl_process_group_is_gloo_and_offload_is_unpinned():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _run_python(
        """
        import json, torch, verl
        from verl.utils.distributed import initialize_global_process_group_ray
        from verl.workers.engine.fsdp.transformer_impl import CPUOffloadPolicy
        initialize_global_process_group_ray(timeout_second=60)
        t = torch.ones(2)
        torch.distributed.all_reduce(t)
        print(json.dumps({
            "backend": torch.distributed.get_backend(),
            "sum": t.tolist(),
            "pin": CPUOffloadPolicy(pin_memory=True).pin_memory,
        }))
        """,
        RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    assert out == {"backend": "cpu:gloo", "sum": [1.0, 1.0], "pin": False}
