"""What this machine gives a process: the CPUs it may use, the cores other work keeps busy, free memory.

Kept free of verl and torch imports (``repo_ext.demo`` imports it and waits on verl for a whole run).

CPUs: ``os.cpu_count()`` counts the machine's CPUs. In a container or under ``taskset`` a process may
run on fewer: the scheduler affinity mask (``os.sched_getaffinity``) lists the CPUs it may run on,
and a cgroup v2 quota (``cpu.max``: "quota period", or "max period" for none) caps the CPU time
it gets, e.g. ``200000 100000`` = 2 CPUs' worth. Thread counts sized from ``os.cpu_count()`` there
oversubscribe the cores the process really has.
"""

from __future__ import annotations

import math
import os
import time
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


def available_memory_gib(meminfo: str | None = None) -> float | None:
    """MemAvailable from ``/proc/meminfo`` (or the given text of it) in GiB; None where there is none."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    for line in meminfo.splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) / 1024**2  # kB
    return None


def cpu_times(stat_text: str) -> tuple[int, int, int]:
    """(all CPU time, idle + iowait time, cores) from the text of ``/proc/stat``, in clock ticks."""
    lines = stat_text.splitlines()
    fields = [int(x) for x in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return sum(fields), fields[3] + fields[4], cores


def busy_cores(interval_s: float = 1.0) -> float:
    """Cores busy with other work right now: the non-idle share of all CPU time in ``/proc/stat``
    over ``interval_s``, times the number of cores. The 1-minute load average lags by minutes: right
    after a job ends it still reads ~1 on an idle 2-core machine (the demo then ran on 1 thread)."""
    try:
        total0, idle0, cores = cpu_times(Path("/proc/stat").read_text())
        time.sleep(interval_s)
        total1, idle1, _ = cpu_times(Path("/proc/stat").read_text())
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    elapsed = total1 - total0
    return 0.0 if elapsed <= 0 else cores * (1.0 - (idle1 - idle0) / elapsed)


def free_cores(cpu_count: int, load_1min: float) -> int:
    """Cores that other work leaves free: ``cpu_count`` minus the busy cores (:func:`busy_cores`, or
    a load average), rounded, >= 1.

    OpenMP threads that outnumber the free cores wait for each other at every barrier: on this
    2-core machine with a load average of 6, evaluation generated 3.4 tokens/s with 2 threads (48 on
    the idle machine); see docs/cpu.md. On an idle machine this is every core.
    """
    return max(1, min(cpu_count, round(cpu_count - load_1min)))
