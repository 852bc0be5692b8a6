"""benchmarks/bench_memory.py: smaps_rollup parsing, process names, and a real process tree
(a child in its own session whose parent exits) summed by PSS."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_memory.py"
_spec = importlib.util.spec_from_file_location("bench_memory", _PATH)
bench_memory = importlib.util.module_from_spec(_spec)
sys.modules["bench_memory"] = bench_memory  # dataclasses look their module up there
_spec.loader.exec_module(bench_memory)

ROLLUP = """55d0c0de0000-7ffd52faf000 ---p 00000000 00:00 0                          [rollup]
Rss:                1612 kB
Pss:                 187 kB
Pss_Anon:            108 kB
Shared_Clean:       1464 kB
"""


def test_smaps_rollup_fields_in_bytes():
    fields = bench_memory.parse_smaps_rollup(ROLLUP)
    assert fields == {"Rss": 1612 * 1024, "Pss": 187 * 1024, "Pss_Anon": 108 * 1024, "Shared_Clean": 1464 * 1024}


@pytest.mark.parametrize(
    "cmdline, name",
    [
        (b"ray::WorkerDict.actor_rollout_compute_log_prob\0\0", "ray::WorkerDict.actor_rollout_compute_log_prob"),
        (b"/v/bin/python\0-m\0verl.trainer.main_ppo\0--config-name=x\0", "python -m verl.trainer.main_ppo"),
        (b"/v/bin/python3\0-u\0/v/lib/ray/_private/log_monitor.py\0--x\0", "log_monitor.py"),
        (b"ray-dashboard-NodeHead-0 (/v/bin/python -B -c \"from multiprocessing\")\0", "ray-dashboard-NodeHead-0"),
        (b"/v/lib/ray/core/src/ray/raylet/raylet\0--raylet_socket_name=/tmp/x\0", "raylet"),
        (b"", "kworker"),
    ],
)
def test_process_names(cmdline, name):
    assert bench_memory.process_name(cmdline, "kworker") == name


def _script(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def _allocate(mib: int, seconds: float) -> str:
    """Python that holds ``mib`` MiB of touched memory for ``seconds``."""
    return f"x = bytearray({mib} * 2**20)\nx[::4096] = b'1' * len(x[::4096])\nimport time\ntime.sleep({seconds})\n"


def test_a_tree_with_an_orphaned_session_is_summed(tmp_path):
    """Parent (150 MiB) starts a child in a new session that starts a grandchild (250 MiB) and exits
    at once; the grandchild is re-parented to init but found by its session. Peak PSS >= 400 MiB."""
    grandchild = _script(tmp_path / "grandchild.py", _allocate(250, 4))
    child = _script(tmp_path / "child.py", f"""
        import subprocess, sys, time
        time.sleep(1.5)
        subprocess.Popen([sys.executable, {str(grandchild)!r}])
    """)
    parent = _script(
        tmp_path / "parent.py",
        f"import subprocess, sys\nsubprocess.Popen([sys.executable, {str(child)!r}], start_new_session=True)\n"
        + _allocate(150, 7),
    )
    proc = subprocess.Popen([sys.executable, str(parent)])
    sampler = bench_memory.TreeSampler(proc.pid, interval=0.1).start()
    try:
        proc.wait(timeout=60)
    finally:
        sampler.stop()
    peak = sampler.peak
    mib = 1024**2
    assert peak is not None
    sizes = sorted(p.pss for p in peak.processes)
    assert sizes[-1] >= 250 * mib and sizes[-2] >= 150 * mib, [s // mib for s in sizes]
    assert peak.pss >= 400 * mib
    assert peak.pss <= peak.rss
    assert {p.name for p in peak.processes} == {"parent.py", "grandchild.py"}


def test_command_line_needs_a_command(capsys):
    with pytest.raises(SystemExit):
        bench_memory.main([])
    assert "give the command to measure" in capsys.readouterr().err
