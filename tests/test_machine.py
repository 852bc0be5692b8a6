"""repo_ext.machine: CPUs a process may use, against hand-written cgroup files and the affinity mask."""

from __future__ import annotations

import os

import pytest

from repo_ext import machine as cores


@pytest.mark.parametrize(
    "text, expected",
    [
        ("max 100000\n", None),          # no quota
        ("200000 100000\n", 2),          # two CPUs' worth
        ("150000 100000\n", 2),          # 1.5 rounds up: a thread count of 1 would leave half a CPU idle
        ("50000 100000\n", 1),           # half a CPU: still one thread
        ("400000 50000\n", 8),
        ("garbage\n", None),
        ("-1 100000\n", None),
    ],
)
def test_cgroup_quota_in_cpus(tmp_path, text, expected):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)
    assert cores.cgroup_cpu_limit(cpu_max) == expected


def test_no_cgroup_file_means_no_limit(tmp_path):
    assert cores.cgroup_cpu_limit(tmp_path / "absent") is None


def test_usable_cpus_is_the_affinity_mask_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(cores.os, "cpu_count", lambda: 64)  # the machine: must not be used
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert cores.usable_cpus(cpu_max) == 6
    cpu_max.write_text("300000 100000\n")
    assert cores.usable_cpus(cpu_max) == 3
    cpu_max.write_text("900000 100000\n")
    assert cores.usable_cpus(cpu_max) == 6


def test_usable_cpus_without_an_affinity_call_falls_back_to_the_cpu_count(tmp_path, monkeypatch):
    monkeypatch.delattr(cores.os, "sched_getaffinity")
    monkeypatch.setattr(cores.os, "cpu_count", lambda: 4)
    assert cores.usable_cpus(tmp_path / "absent") == 4


def test_this_process_can_run_on_what_usable_cpus_reports():
    assert 1 <= cores.usable_cpus() <= len(os.sched_getaffinity(0))
