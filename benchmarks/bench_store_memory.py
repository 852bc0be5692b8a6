"""Long synthetic RePO run, no model: does the replay store stay within its byte cap? (prints measurements)

Each step samples ``--batch-prompts`` prompts (a fresh permutation of all prompts every epoch, like
verl's shuffled dataloader), retrieves their replays (``--strategy``, ``--num-replays``) and inserts
``--samples`` new responses per prompt, with lengths uniform in [1, --max-len] tokens, as the RePO
trainer does. After every step the store's payload must be <= ``--cap-mb``; every
``--checkpoint-every`` steps the store is checked for exact byte accounting (its counter against
the sum over its entries) and conservation (inserted = stored + evicted), saved with the trainer's
checkpoint code, and a row is printed: entries, bytes, evictions, replayed rows, process RSS, and
the checkpoint's size and time.

Default size (about a minute here): 4,000 prompts x 32-entry buffers of ~512 tokens would need
~500 MiB; the cap is 256 MiB, so the byte cap evicts from the second epoch on, while prompts still
come back (every 62 steps) before their entries are evicted, so replay runs. At the end the
trainer's stall diagnosis (``replay_health``) is printed for the run. With ``--prompts 20000
--max-cache 16 --min-cache 16`` the cap evicts every entry before its prompt's third visit: replay
never starts, and the diagnosis says why.

    python benchmarks/bench_store_memory.py
    python benchmarks/bench_store_memory.py --prompts 200 --steps 60 --max-len 64 --cap-mb 0.0625 --checkpoint-every 20
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.replay_health import replay_stall_reason
from repo_ext.integration.store_checkpoint import save_store_state

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
    keys = store.state_dict()["prompt_keys"]
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
    args = p.parse_args(argv)
    if min(args.prompts, args.steps, args.samples, args.max_len, args.checkpoint_every) < 1:
        p.error("--prompts, --steps, --samples, --max-len and --checkpoint-every must be >= 1")
    if not 1 <= args.batch_prompts <= args.prompts:
        p.error(f"--batch-prompts must be in [1, --prompts={args.prompts}], got {args.batch_prompts}")
    if args.cap_mb * MIB < 8 * args.max_len:
        p.error(f"--cap-mb={args.cap_mb} cannot hold one response of --max-len={args.max_len} tokens (8 bytes each)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
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
        f"peak {last.peak_rss / MIB:.1f} MiB (saving a checkpoint serialises the store: transient copies)"
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
