"""How many CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

``os.cpu_count()`` counts the machine's CPUs. In a container or under ``taskset`` a process may
run on fewer: the scheduler affinity mask (``os.sched_getaffinity``) lists the CPUs it may run on,
and a cgroup v2 quota (``cpu.max``: "quota period", or "max period" for none) caps the CPU time
it gets, e.g. ``200000 100000`` = 2 CPUs' worth. Thread counts sized from ``os.cpu_count()`` there
oversubscribe the cores the process really has.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: cgroup v2's CPU limit of the cgroup this process runs in (the unified hierarchy's mount point)
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """CPUs' worth of time the cgroup quota allows, rounded up (>= 1); None without a quota or file."""
    try:
        fields = cpu_max.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: the affinity mask's size (``os.cpu_count()`` where the platform has
    no affinity call), capped by the cgroup v2 quota; always >= 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cpu_max)
    if limit is not None:
        cpus = min(cpus, limit)
    return max(1, cpus)
