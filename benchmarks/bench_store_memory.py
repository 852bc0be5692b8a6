"""Long synthetic RePO run, no model: does the replay store stay within its byte cap? (prints measurements)

Each step samples ``--batch-prompts`` prompts (a fresh permutation of all prompts every epoch, like
verl's shuffled dataloader), retrieves their replays (``--strategy``, ``--num-replays``) and inserts
``--samples`` new responses per prompt, with lengths uniform in [1, --max-len] tokens, as the RePO
trainer does. After every step the store's payload must be <= ``--cap-mb``; every
``--checkpoint-every`` steps the store is checked for exact byte accounting (its counter against
the sum over its entries) and conservation (inserted = stored + evicted), saved with the trainer's
checkpoint code, and a row is printed: entries, bytes, evictions, replayed rows, process RSS, and
the checkpoint's size and time.

Then the memory of one checkpoint save and one load is measured on a store of ``--ckpt-payload-mb``
(entries of 1 to ``--max-len`` tokens), each in a fresh process whose high-water mark is reset
right before the call (Linux ``/proc/self/clear_refs``): this release's streamed format against the
version-1 format of earlier releases (``pickle`` of ``state_dict()``, written here as that release
did; its reader is still ``load_store_state``'s). Save: peak memory above what the process held
before (the store itself), as a ratio to the payload. Load: peak above an empty store, so the
loaded store itself counts (1.0 is the floor).

Default size (about a minute here): 4,000 prompts x 32-entry buffers of ~512 tokens would need
~500 MiB; the cap is 256 MiB, so the byte cap evicts from the second epoch on, while prompts still
come back (every 62 steps) before their entries are evicted, so replay runs. At the end the
trainer's stall diagnosis (``replay_health``) is printed for the run. With ``--prompts 20000
--max-cache 16 --min-cache 16`` the cap evicts every entry before its prompt's third visit: replay
never starts, and the diagnosis says why.

    python benchmarks/bench_store_memory.py
    python benchmarks/bench_store_memory.py --prompts 200 --steps 60 --max-len 64 --cap-mb 0.0625 --checkpoint-every 20
    python benchmarks/bench_store_memory.py --steps 0 --ckpt-payload-mb 512   # checkpoint memory only
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.replay_health import replay_stall_reason
from repo_ext.integration.store_checkpoint import STORE_FILENAME, load_store_state, save_store_state

MIB = 1 << 20


@dataclass
class Interval:
    """Measured at the end of a checkpoint interval."""

    step: int
    prompts: int
    entries: int
    nbytes: int
    max_nbytes: int  # the largest payload seen after any step so far
    num_inserted: int
    capacity_evictions: int
    byte_evictions: int
    replayed_rows: int  # replayed rows retrieved over the whole run
    rss: int
    peak_rss: int  # the process's high-water mark so far, checkpoint saves included
    checkpoint_bytes: int
    checkpoint_seconds: float


def run(args: argparse.Namespace, out_dir: Path) -> tuple[list[Interval], ReplayStore]:
    cap = int(args.cap_mb * MIB)
    store = ReplayStore(
        max_cache_size=args.max_cache, min_cache_to_replay=args.min_cache, max_store_bytes=cap, seed=args.seed
    )
    rng = np.random.default_rng(args.seed)
    # responses are slices of one pool (the store copies what it is given, so its memory is real)
    pool_ids = rng.integers(0, 150_000, size=args.max_len * 64, dtype=np.int64)
    pool_logp = -rng.random(args.max_len * 64).astype(np.float32) * 4
    process = psutil.Process()
    order = np.empty(0, dtype=np.int64)
    cursor, replayed, max_nbytes = 0, 0, 0
    intervals = []
    for step in range(1, args.steps + 1):
        if cursor + args.batch_prompts > order.shape[0]:  # next epoch (drop_last, like verl's sampler)
            order, cursor = rng.permutation(args.prompts), 0
        batch = order[cursor : cursor + args.batch_prompts]
        cursor += args.batch_prompts
        keys = [f"prompt-{p}" for p in batch.tolist()]
        for key in keys:  # retrieve before insert: a step never replays its own samples
            replayed += len(store.retrieve(key, args.strategy, args.num_replays))
        lengths = rng.integers(1, args.max_len + 1, size=(len(keys), args.samples))
        starts = rng.integers(0, pool_ids.shape[0] - args.max_len, size=(len(keys), args.samples))
        rewards = rng.integers(0, 2, size=(len(keys), args.samples))
        for i, key in enumerate(keys):
            for j in range(args.samples):
                begin, end = int(starts[i, j]), int(starts[i, j] + lengths[i, j])
                store.insert(key, pool_ids[begin:end], pool_logp[begin:end], float(rewards[i, j]), step)
        if store.nbytes > cap:
            raise AssertionError(f"step {step}: store holds {store.nbytes} bytes, above its cap of {cap}")
        max_nbytes = max(max_nbytes, store.nbytes)
        if step % args.checkpoint_every == 0 or step == args.steps:
            intervals.append(_measure(store, step, max_nbytes, replayed, process, out_dir))
    return intervals, store


def _measure(store: ReplayStore, step: int, max_nbytes: int, replayed: int, process, out_dir: Path) -> Interval:
    # exact accounting: the store's running byte counter against its entries, one by one
    keys = store.state_header()["prompt_keys"]
    counted = sum(entry.nbytes for key in keys for entry in store.entries(key))
    if counted != store.nbytes:
        raise AssertionError(f"step {step}: byte counter {store.nbytes} != sum over entries {counted}")
    if store.num_inserted != store.num_entries + store.num_evictions:
        raise AssertionError(
            f"step {step}: inserted {store.num_inserted} != stored {store.num_entries} + evicted {store.num_evictions}"
        )
    start = time.perf_counter()
    path = save_store_state(store, out_dir / "global_step_latest", step)
    seconds = time.perf_counter() - start
    return Interval(
        step=step,
        prompts=store.num_prompts,
        entries=store.num_entries,
        nbytes=store.nbytes,
        max_nbytes=max_nbytes,
        num_inserted=store.num_inserted,
        capacity_evictions=store.num_capacity_evictions,
        byte_evictions=store.num_byte_evictions,
        replayed_rows=replayed,
        rss=process.memory_info().rss,
        peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        checkpoint_bytes=path.stat().st_size,
        checkpoint_seconds=seconds,
    )


@dataclass
class CheckpointMemory:
    """One save or load of a store checkpoint, measured in a fresh process."""

    fmt: str  # "v1" (pickle, earlier releases) or "v2" (this release)
    op: str  # "save" or "load"
    payload: int  # the store's nbytes
    peak_extra: int  # high-water mark during the call minus RSS right before it
    held: int  # RSS right after the call minus RSS right before it (load: the loaded store itself)
    seconds: float
    file_bytes: int


def _synthetic_store(payload: int, max_len: int, seed: int) -> ReplayStore:
    """An uncapped store of at least ``payload`` bytes: 8-entry buffers of 1..max_len tokens."""
    store = ReplayStore(max_cache_size=8, min_cache_to_replay=2, seed=seed)
    rng = np.random.default_rng(seed)
    pool_ids = rng.integers(0, 150_000, size=max_len * 64, dtype=np.int64)
    pool_logp = -rng.random(max_len * 64).astype(np.float32) * 4
    i = 0
    while store.nbytes < payload:
        n, start = int(rng.integers(1, max_len + 1)), int(rng.integers(0, pool_ids.shape[0] - max_len))
        store.insert(f"prompt-{i // 8}", pool_ids[start : start + n], pool_logp[start : start + n], float(i % 2), 1)
        i += 1
    return store


def _save_version_1(store: ReplayStore, step_dir: Path, step: int) -> Path:
    """The checkpoint writer of earlier releases: the state dict pickled to bytes, then pickled again."""
    payload = pickle.dumps(store.state_dict(), protocol=pickle.HIGHEST_PROTOCOL)
    blob = {"format_version": 1, "global_step": step, "sha256": hashlib.sha256(payload).hexdigest(), "state": payload}
    step_dir.mkdir(parents=True, exist_ok=True)
    path = step_dir / STORE_FILENAME
    with open(path, "wb") as f:
        pickle.dump(blob, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _checkpoint_call(fmt: str, op: str, payload: int, max_len: int, seed: int, step_dir: str) -> CheckpointMemory:
    """Runs in a fresh process: build (save) or create empty (load) a store, reset the high-water
    mark, make the one call, return the peak above the RSS before it."""
    folder = Path(step_dir)
    if op == "save":
        store = _synthetic_store(payload, max_len, seed)
    else:
        store = ReplayStore(max_cache_size=8, min_cache_to_replay=2, seed=seed)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    before = _proc_status_kib("VmRSS")
    start = time.perf_counter()
    if op == "save":
        path = _save_version_1(store, folder, 1) if fmt == "v1" else save_store_state(store, folder, 1)
    else:
        load_store_state(store, folder, expected_step=1)
        path = folder / STORE_FILENAME if fmt == "v1" else folder / "actor" / STORE_FILENAME
    seconds = time.perf_counter() - start
    peak, after = _proc_status_kib("VmHWM"), _proc_status_kib("VmRSS")
    return CheckpointMemory(fmt, op, store.nbytes, (peak - before) * 1024, (after - before) * 1024, seconds,
                            path.stat().st_size)


def checkpoint_memory(payload_mb: float, max_len: int, seed: int, out_dir: Path) -> list[CheckpointMemory]:
    """Save then load, v1 and v2, each call in its own fresh process (spawned: nothing inherited)."""
    results = []
    for fmt in ("v1", "v2"):
        for op in ("save", "load"):
            with ProcessPoolExecutor(max_workers=1, mp_context=_spawn()) as pool:
                args = (fmt, op, int(payload_mb * MIB), max_len, seed, str(out_dir / fmt / "global_step_1"))
                results.append(pool.submit(_checkpoint_call, *args).result())
    return results


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")


def print_checkpoint_memory(results: list[CheckpointMemory]) -> None:
    payload = results[0].payload
    print(
        f"checkpoint memory, store payload {payload} bytes ({payload / MIB:.1f} MiB); peak = high-water mark "
        "during the call minus RSS before it (save: the store is already in memory; load: into an empty store); "
        "held = RSS after the call minus RSS before it (load: the loaded store, payload and Python objects)"
    )
    print(
        f"{'format':<28} {'op':<5} {'peak MiB':>9} {'peak/payload':>13} {'held MiB':>9} {'seconds':>8} "
        f"{'file MiB':>9}"
    )
    names = {"v1": "v1 pickle (earlier releases)", "v2": "v2 streamed (this release)"}
    for r in results:
        print(
            f"{names[r.fmt]:<28} {r.op:<5} {r.peak_extra / MIB:>9.1f} {r.peak_extra / r.payload:>13.2f} "
            f"{r.held / MIB:>9.1f} {r.seconds:>8.2f} {r.file_bytes / MIB:>9.1f}"
        )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--prompts", type=int, default=4_000)
    p.add_argument("--steps", type=int, default=2_000)
    p.add_argument("--batch-prompts", type=int, default=64)
    p.add_argument("--samples", type=int, default=8, help="on-policy responses per prompt per step (rollout.n)")
    p.add_argument("--max-len", type=int, default=1024, help="longest response, tokens")
    p.add_argument("--cap-mb", type=float, default=256.0, help="max_store_bytes, MiB")
    p.add_argument("--max-cache", type=int, default=32)
    p.add_argument("--min-cache", type=int, default=8)
    p.add_argument("--num-replays", type=int, default=8)
    p.add_argument("--strategy", default="recent_k")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ckpt-payload-mb", type=float, default=256.0,
        help="payload of the store whose checkpoint save/load memory is measured, MiB (0: skip)",
    )
    args = p.parse_args(argv)
    if min(args.prompts, args.samples, args.max_len, args.checkpoint_every) < 1:
        p.error("--prompts, --samples, --max-len and --checkpoint-every must be >= 1")
    if args.steps < 0 or args.ckpt_payload_mb < 0:
        p.error("--steps and --ckpt-payload-mb must be >= 0 (0 skips that part)")
    if not 1 <= args.batch_prompts <= args.prompts:
        p.error(f"--batch-prompts must be in [1, --prompts={args.prompts}], got {args.batch_prompts}")
    if args.cap_mb * MIB < 8 * args.max_len:
        p.error(f"--cap-mb={args.cap_mb} cannot hold one response of --max-len={args.max_len} tokens (8 bytes each)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.steps:
        run_steps(args)
    if args.ckpt_payload_mb:
        with tempfile.TemporaryDirectory() as tmp:
            print_checkpoint_memory(checkpoint_memory(args.ckpt_payload_mb, args.max_len, args.seed, Path(tmp)))
    return 0


def run_steps(args: argparse.Namespace) -> None:
    cap = int(args.cap_mb * MIB)
    print(
        f"{args.prompts} prompts, {args.steps} steps x {args.batch_prompts} prompts x {args.samples} samples, "
        f"responses 1..{args.max_len} tokens, max_cache_size {args.max_cache}, cap {cap} bytes ({args.cap_mb:g} MiB)"
    )
    rss_start = psutil.Process().memory_info().rss
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        intervals, store = run(args, Path(tmp))
    seconds = time.perf_counter() - start
    header = (
        f"{'step':>6} {'prompts':>8} {'entries':>9} {'bytes':>12} {'cap %':>6} {'inserted':>10} "
        f"{'cap.evict':>10} {'byte.evict':>10} {'replayed':>10} {'RSS MiB':>8} {'peak MiB':>9} {'ckpt MiB':>9} "
        f"{'ckpt s':>7}"
    )
    print(header)
    for it in intervals:
        print(
            f"{it.step:>6} {it.prompts:>8} {it.entries:>9} {it.nbytes:>12} {100 * it.nbytes / cap:>6.1f} "
            f"{it.num_inserted:>10} {it.capacity_evictions:>10} {it.byte_evictions:>10} {it.replayed_rows:>10} "
            f"{it.rss / MIB:>8.1f} {it.peak_rss / MIB:>9.1f} {it.checkpoint_bytes / MIB:>9.2f} {it.checkpoint_seconds:>7.3f}"
        )
    last = intervals[-1]
    peak = max(it.max_nbytes for it in intervals)
    print(f"max payload after any step: {peak} bytes = {100 * peak / cap:.2f}% of the cap (never above: checked every step)")
    half = intervals[len(intervals) // 2]
    print(
        f"RSS: {rss_start / MIB:.1f} MiB at start, {half.rss / MIB:.1f} MiB at step {half.step}, "
        f"{last.rss / MIB:.1f} MiB at step {last.step}; "
        f"non-payload memory per stored entry ~{(last.rss - rss_start - last.nbytes) / max(last.entries, 1):.0f} bytes; "
        f"peak {last.peak_rss / MIB:.1f} MiB"
    )
    print(f"{last.num_inserted} inserted, {last.entries} stored, {last.capacity_evictions + last.byte_evictions} evicted; "
          f"{seconds:.1f} s wall")
    reason = replay_stall_reason(
        strategy=args.strategy,
        global_step=args.steps,
        total_injected=last.replayed_rows,
        min_cache_to_replay=args.min_cache,
        rollout_n=args.samples,
        steps_per_epoch=args.prompts // args.batch_prompts,
        store_stats=store.stats(),
        bad_rows={},
        dataset_prompts=args.prompts,
    )
    print(f"replay health: {'ok' if reason is None else reason}")


if __name__ == "__main__":
    sys.exit(main())
