"""A run whose Ray resources can never be placed fails with a message in bounded time."""

import subprocess
import sys
import textwrap
import time

import pytest

from repo_ext.cpu.tiny_run import MainPPOFailed, run_main_ppo, tiny_grpo_overrides, write_arithmetic_parquet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(200)]


def test_unplaceable_actor_stops_the_driver():
    script = textwrap.dedent(
        """
        import ray
        from repo_ext.cpu.resource_watchdog import ResourceWatchdog
        ray.init(num_cpus=1, num_gpus=0, include_dashboard=False)
        ResourceWatchdog(timeout_s=3, poll_s=0.5).on_job_start(config=None)

        @ray.remote(num_cpus=4)
        class NeedsFourCPUs:
            def ping(self):
                return 1

        ray.get(NeedsFourCPUs.remote().ping.remote())
        """
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 90
    assert "could not place these for 3 s" in proc.stderr
    assert "actor NeedsFourCPUs" in proc.stderr
    assert "ray_kwargs.ray_init.num_cpus" in proc.stderr


def test_main_ppo_with_too_few_cpus_fails_with_a_message(tmp_path, tiny_model_path):
    train = write_arithmetic_parquet(tmp_path / "train.parquet", num_prompts=8)
    overrides = tiny_grpo_overrides(tiny_model_path, train, tmp_path / "out") + [
        "ray_kwargs.ray_init.num_cpus=2",
        "hydra.callbacks.cpu_resource_watchdog.timeout_s=10",
    ]
    start = time.monotonic()
    with pytest.raises(MainPPOFailed) as failure:
        run_main_ppo(overrides, timeout_s=150, log_path=tmp_path / "main_ppo.log")
    assert time.monotonic() - start < 150
    assert "repo_ext.cpu resource watchdog: Ray could not place" in str(failure.value)
