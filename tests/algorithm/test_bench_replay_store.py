"""Smoke test: the replay-store benchmark runs at its smallest size (its numbers are not checked here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_replay_store.py"


def test_benchmark_main_runs_at_the_smallest_size(capsys):
    spec = importlib.util.spec_from_file_location("bench_replay_store", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--prompts", "20", "--entries", "4", "--tokens", "8", "--k", "2", "--ops", "20", "--repeats", "1",
            "--variance-sizes", "6:3"]
    assert bench.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["20", "80"] for line in lines)  # 20 prompts x 4 entries
    assert any(line.split()[:3] == ["6", "3", "20"] for line in lines)  # C(6, 3) = 20 subsets
