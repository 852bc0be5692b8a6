"""Fail a verl run that cannot get its Ray resources, instead of letting it wait forever.

When a placement group or an actor asks for more logical CPUs/GPUs than the Ray cluster has,
Ray keeps it pending indefinitely and verl waits in ``ray.get`` (e.g.
``verl/single_controller/ray/base.py: RayResourcePool.get_placement_groups`` waits on
``pg.ready()`` without a timeout). On a CPU-only machine that happens whenever
``ray_kwargs.ray_init.num_cpus``/``num_gpus`` are too small for the workers a config starts.

:class:`ResourceWatchdog` is a Hydra callback (the preset ``+preset=cpu`` installs it under
``hydra.callbacks.cpu_resource_watchdog``). In the driver it starts a daemon thread that checks
this job's placement groups and actors every few seconds; if any stays unplaced for
``timeout_s``, it prints what was requested against what the cluster has and how to fix it, then
interrupts the driver (SIGINT: ``ray.get`` raises KeyboardInterrupt and Ray shuts down).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Optional

from hydra.experimental.callback import Callback

__all__ = ["ResourceWatchdog", "find_unplaced"]


def find_unplaced() -> list[str]:
    """Descriptions of this job's placement groups and actors that Ray has not placed yet."""
    import ray
    from ray._private import state

    job_id = ray.get_runtime_context().get_job_id()
    pending = []
    for pg_id, pg in ray.util.placement_group_table().items():
        if pg.get("state") == "PENDING":
            bundles = list((pg.get("bundles") or {}).values())
            pending.append(f"placement group {pg.get('name') or pg_id} asking for bundles {bundles}")
    for actor in state.actors().values():
        if actor.get("JobID") not in (None, job_id):
            continue
        address = actor.get("Address") or {}
        # PENDING_CREATION with no worker port: waiting for resources, not running __init__
        if actor.get("State") == "PENDING_CREATION" and not address.get("Port"):
            pending.append(f"actor {actor.get('ActorClassName')} ({actor.get('Name') or 'unnamed'})")
    return pending


class ResourceWatchdog(Callback):
    """Hydra callback: abort the run when Ray resources stay unavailable for ``timeout_s`` seconds.

    Args:
        timeout_s: how long a placement group / actor may stay unplaced (> 0).
        poll_s: seconds between checks (> 0).
    """

    def __init__(self, timeout_s: float = 120.0, poll_s: float = 2.0):
        if not timeout_s > 0:
            raise ValueError(f"ResourceWatchdog: timeout_s must be > 0 seconds, got {timeout_s!r}")
        if not poll_s > 0:
            raise ValueError(f"ResourceWatchdog: poll_s must be > 0 seconds, got {poll_s!r}")
        self.timeout_s = float(timeout_s)
        self.poll_s = float(poll_s)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="repo_ext-cpu-resource-watchdog", daemon=True)
        self._thread.start()

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        self._stop.set()

    def _watch(self) -> None:
        import ray

        unplaced_since: Optional[float] = None
        while not self._stop.wait(self.poll_s):
            if not ray.is_initialized():
                unplaced_since = None
                continue
            try:
                pending = find_unplaced()
            except Exception:  # noqa: BLE001 - Ray shutting down or not reachable: nothing to judge
                unplaced_since = None
                continue
            if not pending:
                unplaced_since = None
                continue
            now = time.monotonic()
            unplaced_since = unplaced_since or now
            if now - unplaced_since >= self.timeout_s:
                self._fail(pending)
                return

    def _fail(self, pending: list[str]) -> None:
        import ray

        try:
            total = ray.cluster_resources()
        except Exception:  # noqa: BLE001
            total = {}
        message = (
            "\n" + "=" * 100 + "\n"
            f"repo_ext.cpu resource watchdog: Ray could not place these for {self.timeout_s:.0f} s, "
            "so the run would wait forever:\n  - "
            + "\n  - ".join(pending[:20])
            + f"\nThe Ray cluster has CPU={total.get('CPU', 0):g}, GPU={total.get('GPU', 0):g}. verl asks for "
            "trainer.nnodes * trainer.n_gpus_per_node GPUs (pseudo-GPUs on CPU) and 3 logical CPUs per "
            "training process, plus one CPU per helper actor.\nFix: raise ray_kwargs.ray_init.num_cpus (the "
            "cpu preset uses 16) and make ray_kwargs.ray_init.num_gpus >= trainer.n_gpus_per_node, or lower "
            "actor_rollout_ref.rollout.agent.num_workers / reward.num_workers. The limit is "
            "hydra.callbacks.cpu_resource_watchdog.timeout_s. Stopping the run now.\n" + "=" * 100
        )
        print(message, file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        # a driver that ignores SIGINT still ends, a little later
        if not self._stop.wait(30):
            os._exit(1)
