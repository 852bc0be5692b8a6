"""Short version of benchmarks/bench_store_memory.py: the byte cap holds over many steps, evictions counted;
checkpoint save/load hold no serialised copy of the store (issue #13 finding 9)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_store_memory.py"
ARGS = ["--prompts", "120", "--steps", "90", "--batch-prompts", "12", "--samples", "4", "--max-len", "48",
        "--cap-mb", "0.05", "--max-cache", "6", "--min-cache", "4", "--num-replays", "3", "--checkpoint-every", "30",
        "--ckpt-payload-mb", "0"]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_store_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_cap_holds_and_every_insert_is_stored_or_evicted(tmp_path):
    bench = _bench()
    intervals, store = bench.run(bench._parse(ARGS), tmp_path)  # raises if the cap is exceeded after any step
    cap = int(0.05 * (1 << 20))
    assert [it.step for it in intervals] == [30, 60, 90]
    for it in intervals:
        assert it.max_nbytes <= cap and it.nbytes <= cap
        assert it.num_inserted == it.step * 12 * 4  # steps x prompts per step x samples, by hand
        assert it.num_inserted == it.entries + it.capacity_evictions + it.byte_evictions
        assert it.checkpoint_bytes > it.nbytes  # the saved store carries its payload
    # 90 steps x 48 rows x ~24.5 tokens x 8 bytes is ~16x the cap: the cap must have evicted, and filled up
    assert intervals[-1].byte_evictions > 0 and intervals[-1].max_nbytes > 0.9 * cap
    assert store.stats()["num_inserted"] == intervals[-1].num_inserted


def test_main_prints_a_row_per_checkpoint_interval(capsys):
    assert _bench().main(ARGS) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit() and len(line.split()) == 13]
    assert [int(r[0]) for r in rows] == [30, 60, 90]
    assert any(line.startswith("max payload after any step") for line in lines)
    assert any(line.startswith("replay health: ") for line in lines)


def test_checkpoint_save_and_load_peak_memory_against_the_payload():
    """Each call in a fresh process (the script spawns them): a 32 MiB store. Saving must not hold a
    copy of the payload (earlier releases: ~2x more), loading nothing beyond the store it fills."""
    out = subprocess.run(
        [sys.executable, str(BENCH), "--steps", "0", "--ckpt-payload-mb", "32", "--max-len", "512"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    rows = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 10 and fields[0] in ("v1", "v2"):
            # format words (4), op, peak MiB, peak/payload, held MiB, seconds, file MiB
            rows[fields[0], fields[4]] = {"peak": float(fields[5]), "held": float(fields[7])}
    assert sorted(rows) == [("v1", "load"), ("v1", "save"), ("v2", "load"), ("v2", "save")], out
    payload = 32.0
    assert rows["v1", "save"]["peak"] > 1.5 * payload  # the old format's copies, seen by this measurement
    assert rows["v2", "save"]["peak"] < 0.25 * payload
    assert rows["v1", "load"]["peak"] - rows["v1", "load"]["held"] > 0.8 * payload
    assert rows["v2", "load"]["peak"] - rows["v2", "load"]["held"] < 0.1 * payload
    assert rows["v2", "load"]["held"] >= payload  # the loaded store really holds its payload
