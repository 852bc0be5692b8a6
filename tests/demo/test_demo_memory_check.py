"""The demo stops before starting verl when the machine has less free memory than its preset needs;
its torch threads follow the cores that other work leaves free."""

from __future__ import annotations

import pytest

from repo_ext import demo, machine
from repo_ext.demo import REQUIRED_GIB, check_memory
from repo_ext.machine import available_memory_gib

MEMINFO = """MemTotal:       24576000 kB
MemFree:         1000000 kB
MemAvailable:    5242880 kB
Buffers:          100000 kB
"""


def test_mem_available_is_read_in_gib():
    assert available_memory_gib(MEMINFO) == 5.0  # 5242880 kB / 1024**2
    assert available_memory_gib("MemTotal: 1 kB\n") is None  # kernels before 3.14 have no MemAvailable


def test_enough_memory_passes():
    check_memory("default", REQUIRED_GIB["default"])
    check_memory("quick", 100.0)


def test_too_little_for_default_names_the_need_and_the_preset_that_fits():
    available = (REQUIRED_GIB["quick"] + REQUIRED_GIB["default"]) / 2  # quick fits, default does not
    with pytest.raises(SystemExit) as error:
        check_memory("default", available)
    message = str(error.value)
    assert f"needs about {REQUIRED_GIB['default']:.1f} GiB" in message
    assert f"{available:.1f} GiB available" in message
    assert "--preset quick fits" in message


def test_too_little_for_any_preset_says_so():
    with pytest.raises(SystemExit, match=r"no preset fits; the smallest, --preset quick, needs"):
        check_memory("long", REQUIRED_GIB["quick"] - 0.5)


def test_main_stops_before_any_work(monkeypatch, tmp_path):
    """main() with a faked /proc/meminfo: exits with the message and starts nothing (no output folder)."""
    monkeypatch.setattr(demo, "available_memory_gib", lambda: 1.0)
    out = tmp_path / "demo"
    with pytest.raises(SystemExit, match="needs about"):
        demo.main(["--out", str(out)])
    assert not out.exists()


def test_requirements_grow_with_the_preset():
    # the presets only grow (batch, response length): so must the memory they need
    assert REQUIRED_GIB["quick"] <= REQUIRED_GIB["default"] <= REQUIRED_GIB["long"]
    assert set(REQUIRED_GIB) == set(demo.PRESETS)


@pytest.mark.parametrize(
    "cores, load, threads",
    [(2, 0.2, 2), (2, 0.6, 1), (2, 6.0, 1), (8, 1.0, 7), (8, 2.6, 5), (4, 0.0, 4)],
)
def test_free_cores(cores, load, threads):
    # cores minus the load average, rounded, between 1 and the cores
    assert machine.free_cores(cores, load) == threads


def test_cpu_times_from_proc_stat_by_hand():
    before = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1\n"
    after = "cpu  250 0 100 850 50 0 0 0 0 0\ncpu0 125 0 50 425 25 0 0 0 0 0\ncpu1 125 0 50 425 25 0 0 0 0 0\nintr 2\n"
    assert machine.cpu_times(before) == (1000, 850, 2)
    total0, idle0, cores = machine.cpu_times(before)
    total1, idle1, _ = machine.cpu_times(after)
    # 250 ticks passed, 50 of them idle: 80% busy on 2 cores = 1.6 busy cores -> 0.4 free -> 1 thread
    assert cores * (1 - (idle1 - idle0) / (total1 - total0)) == pytest.approx(1.6)
    assert machine.free_cores(cores, 1.6) == 1


def test_busy_cores_of_this_machine_is_between_zero_and_its_cores():
    import os

    assert 0.0 <= machine.busy_cores(0.2) <= (os.cpu_count() or 1) + 1e-9
