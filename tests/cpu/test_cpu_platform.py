"""repo_ext.cpu registration: the cpu platform and its workarounds with the opt-in
(``VERL_PLATFORM=cpu`` / ``+preset=cpu``), and none of them without it: verl's own platform choice,
what a GPU user sees, also on a CPU-only node of a GPU cluster."""

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
    run_env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "OMP_NUM_THREADS")}
    run_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=run_env, timeout=150
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cpu_platform_with_the_opt_in_has_engines_and_rollout_registered():
    out = _run_python(
        """
        import json, verl
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
        engines = EngineRegistry._engines
        print(json.dumps({
            "platform": isinstance(get_platform(), PlatformCPU),
            "device": [get_device_name(), get_device_id(), get_nccl_backend(), get_resource_name()],
            "engines": all(
                engines["language_model"][b]["cpu"] is FSDPEngineWithLMHead
                and engines["value_model"][b]["cpu"] is FSDPEngineWithValueHead
                for b in ("fsdp", "fsdp2")
            ),
            "rollout": get_rollout_class("hf_cpu", "async") is HFServerAdapter
            and get_rollout_replica_class("hf_cpu") is HFRolloutReplica,
        }))
        """,
        VERL_PLATFORM="cpu",
    )
    assert out == {"platform": True, "device": ["cpu", "cpu", "gloo", "GPU"], "engines": True, "rollout": True}


_PLATFORM_PROBE = """
    import json, verl
    import verl.utils.distributed as dist
    import verl.workers.engine.fsdp.transformer_impl as impl
    from verl.plugin.platform import get_platform
    from verl.workers.engine.base import EngineRegistry
    print(json.dumps({
        "platform": type(get_platform()).__name__,
        "device": get_platform().device_name,
        "cpu_engine": "cpu" in EngineRegistry._engines["language_model"]["fsdp2"],
        "pg_wrapped": getattr(dist.initialize_global_process_group_ray, "_repo_ext_cpu", False),
        "offload_patched": getattr(impl.CPUOffloadPolicy, "_repo_ext_cpu", False),
    }))
    """


def test_without_the_opt_in_verl_chooses_its_own_platform():
    """No VERL_PLATFORM on a host without an accelerator (this one): the plugin loaded changes nothing;
    verl's own choice is the one it makes with no plugin at all."""
    with_plugin = _run_python(_PLATFORM_PROBE)
    stock = _run_python(_PLATFORM_PROBE, VERL_USE_EXTERNAL_PLUGINS="none")
    assert with_plugin == stock
    assert with_plugin["platform"] != "PlatformCPU" and with_plugin["device"] != "cpu"
    assert not (with_plugin["cpu_engine"] or with_plugin["pg_wrapped"] or with_plugin["offload_patched"])


def test_preset_opts_in_every_process():
    """``+preset=cpu``: Ray workers get VERL_PLATFORM=cpu through verl's runtime_env merge, and the
    launching process (whose platform verl chose at import) is switched by the preset's callback
    before verl's ``main`` runs ``auto_set_device``, which then keeps ``trainer.device=cpu``."""
    out = _run_python(
        """
        import json, os
        import verl.trainer.main_ppo  # verl picks the launcher's platform here, before Hydra
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
        from verl.plugin.platform import get_platform
        from verl.trainer.constants_ppo import get_ppo_ray_runtime_env
        from verl.utils.device import auto_set_device

        before = type(get_platform()).__name__
        config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = compose(config_name="ppo_trainer", overrides=["+preset=cpu"], return_hydra_config=True)
        # what verl's run_ppo passes to ray.init
        env = OmegaConf.merge(get_ppo_ray_runtime_env(cfg), cfg.ray_kwargs.ray_init.runtime_env).env_vars
        for callback in cfg.hydra.callbacks.values():
            if callback._target_.startswith("repo_ext.cpu.opt_in"):
                instantiate(callback).on_job_start(config=cfg)
        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        auto_set_device(task)
        print(json.dumps({
            "before": before,
            "after": type(get_platform()).__name__,
            "ray_env": env.get("VERL_PLATFORM"),
            "process_env": os.environ.get("VERL_PLATFORM"),
            "device": task.trainer.device,
            "threads": os.environ.get("OMP_NUM_THREADS"),
        }))
        """
    )
    assert out == {
        "before": "PlatformCUDA",
        "after": "PlatformCPU",
        "ray_env": "cpu",
        "process_env": "cpu",
        "device": "cpu",
        "threads": str(len(os.sched_getaffinity(0))),  # one training process per node: every usable core
    }


@pytest.mark.parametrize(
    "cores, per_node, preset, expected",
    [(2, 1, None, "2"), (8, 2, None, "4"), (3, 2, None, "1"), (1, 4, None, "1"), (8, 1, "3", "3")],
)
def test_training_workers_get_the_nodes_cores_unless_the_shell_chose(monkeypatch, cores, per_node, preset, expected):
    from omegaconf import OmegaConf

    from repo_ext.cpu import opt_in

    if preset is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", preset)
    monkeypatch.setattr(opt_in, "usable_cpus", lambda: cores)
    opt_in.set_worker_threads(OmegaConf.create({"trainer": {"n_gpus_per_node": per_node}}))
    assert os.environ["OMP_NUM_THREADS"] == expected


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
        VERL_PLATFORM="cpu",
        RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    assert out == {"backend": "cpu:gloo", "sum": [1.0, 1.0], "pin": False}
