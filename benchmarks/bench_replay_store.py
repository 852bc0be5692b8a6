"""Micro-benchmark of the RePO replay store (not a test: it prints measured numbers).

1. Per-operation cost against the number of prompts in the store: the store is filled with
   ``--prompts`` prompts x ``--entries`` entries (per-prompt buffers full, so every measured insert
   also evicts), then inserts and retrievals hit random prompts. Retrieval is a dict lookup plus
   work on one prompt's buffer, so its cost should stay flat as the store grows.
   "step/prompt" is one training step's store work for a prompt: one retrieve (recent_k, k) and
   k inserts. "insert+byte-evict" is an insert into a store at its byte cap (no per-prompt
   eviction), which evicts the globally oldest entry.
2. ``max_variance_k``: the exact O(n log n) selection against a brute force over all C(n, k)
   subsets (vectorised numpy), as the reference implementation does.

    python benchmarks/bench_replay_store.py
    python benchmarks/bench_replay_store.py --prompts 100 1000 --tokens 256
"""

from __future__ import annotations

import argparse
import gc
import itertools
import resource
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from repo_ext.algorithm.retrieval import select_replay_indices
from repo_ext.algorithm.store import ReplayStore


def _per_op_us(run: Callable[[int], None], ops: int, repeats: int) -> float:
    """Best-of-``repeats`` mean CPU time of ``run(i)`` for i in range(ops), in microseconds.

    CPU time of this thread, not wall time: on a shared machine other processes' time slices
    would otherwise show up as noise.
    """
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        for i in range(ops):
            run(i)
        best = min(best, (time.thread_time() - start) / ops)
    return best * 1e6


def _payload(rng: np.random.Generator, count: int, tokens: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    return [
        (
            rng.integers(0, 150_000, size=tokens, dtype=np.int32),
            (-rng.random(tokens) * 4).astype(np.float32),
            float(rng.integers(0, 2)),
        )
        for _ in range(count)
    ]


def _filled_store(prompts: int, entries: int, pool: list, capped: bool) -> ReplayStore:
    fill_bytes = prompts * entries * pool[0][0].nbytes * 2
    store = ReplayStore(
        max_cache_size=entries * 4 if capped else entries,
        min_cache_to_replay=entries,
        max_store_bytes=fill_bytes if capped else None,
    )
    for step in range(entries):
        for p in range(prompts):
            ids, log_probs, reward = pool[(step * prompts + p) % len(pool)]
            store.insert(f"prompt-{p}", ids, log_probs, reward, step)
    return store


def bench_store(prompts: int, entries: int, tokens: int, k: int, ops: int, repeats: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    pool = _payload(rng, 1024, tokens)
    keys = [f"prompt-{p}" for p in rng.integers(0, prompts, size=ops)]

    start = time.perf_counter()
    store = _filled_store(prompts, entries, pool, capped=False)
    fill_s = time.perf_counter() - start
    assert store.num_entries == prompts * entries

    def insert(i: int) -> None:
        ids, log_probs, reward = pool[i % len(pool)]
        store.insert(keys[i], ids, log_probs, reward, entries)

    def step_work(i: int) -> None:
        store.retrieve(keys[i], "recent_k", k)
        for j in range(k):
            ids, log_probs, reward = pool[(i + j) % len(pool)]
            store.insert(keys[i], ids, log_probs, reward, entries)

    row = {
        "prompts": prompts,
        "entries": store.num_entries,
        "fill_s": fill_s,
        "insert": _per_op_us(insert, ops, repeats),
        "recent_k": _per_op_us(lambda i: store.retrieve(keys[i], "recent_k", k), ops, repeats),
        "highest_k": _per_op_us(lambda i: store.retrieve(keys[i], "highest_k", k), ops, repeats),
        "max_variance_k": _per_op_us(lambda i: store.retrieve(keys[i], "max_variance_k", k), ops, repeats),
        "random_k": _per_op_us(lambda i: store.retrieve(keys[i], "random_k", k), ops, repeats),
        "step": _per_op_us(step_work, max(1, ops // k), repeats),
        "payload_mib": store.nbytes / 2**20,
    }
    del store
    gc.collect()

    capped = _filled_store(prompts, entries, pool, capped=True)
    evictions_before = capped.num_byte_evictions

    def insert_capped(i: int) -> None:
        ids, log_probs, reward = pool[i % len(pool)]
        capped.insert(keys[i], ids, log_probs, reward, entries)

    row["insert_byte_cap"] = _per_op_us(insert_capped, ops, repeats)
    assert capped.num_byte_evictions - evictions_before == ops * repeats  # one eviction per insert
    row["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del capped
    gc.collect()
    return row


def _brute_force_max_variance(rewards: np.ndarray, k: int) -> np.ndarray:
    combos = np.array(list(itertools.combinations(range(rewards.shape[0]), k)), dtype=np.int64)
    values = rewards[combos]
    variance, total = values.var(axis=1), values.sum(axis=1)
    best = np.lexsort((total, variance))[-1]  # largest variance, then largest sum
    return combos[best]


def bench_max_variance(sizes: Sequence[tuple[int, int]], repeats: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    for n, k in sizes:
        buffers = [rng.integers(0, 2, size=n).astype(np.float64) for _ in range(10)]
        buffers += [rng.random(n) for _ in range(10)]
        for rewards in buffers:  # same (variance, sum) as the brute force
            exact = rewards[select_replay_indices("max_variance_k", rewards, k, rng=None)]
            brute = rewards[_brute_force_max_variance(rewards, k)]
            assert np.isclose(exact.var(), brute.var(), rtol=0, atol=1e-12)
            assert np.isclose(exact.sum(), brute.sum(), rtol=0, atol=1e-9)
        exact_us = _per_op_us(
            lambda i: select_replay_indices("max_variance_k", buffers[i % len(buffers)], k, rng=None), 200, repeats
        )
        brute_reps = max(1, 2000 // (len(list(itertools.combinations(range(n), k))) // 10 + 1))
        brute_us = _per_op_us(lambda i: _brute_force_max_variance(buffers[i % len(buffers)], k), brute_reps, repeats)
        rows.append({"n": n, "k": k, "subsets": len(list(itertools.combinations(range(n), k))),
                     "exact_us": exact_us, "brute_us": brute_us})
    return rows


def _parse_sizes(text: str) -> tuple[int, int]:
    n, k = text.split(":")
    return int(n), int(k)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, nargs="+", default=[100, 1_000, 10_000, 100_000])
    parser.add_argument("--entries", type=int, default=16, help="entries per prompt (= max_cache_size)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per response")
    parser.add_argument("--k", type=int, default=8, help="replays retrieved per prompt")
    parser.add_argument("--ops", type=int, default=4000, help="timed operations per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many timed runs")
    parser.add_argument("--variance-sizes", type=_parse_sizes, nargs="+", default=[(8, 4), (12, 6), (16, 8)],
                        metavar="N:K")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"ReplayStore: {args.entries} entries/prompt x {args.tokens} tokens, k={args.k}; "
          f"CPU microseconds per operation (best of {args.repeats} x {args.ops} ops)")
    header = (
        f"{'prompts':>8} {'entries':>9} {'payload':>9} {'fill s':>7} {'insert':>7} {'recent_k':>9} {'highest_k':>9} "
        f"{'max_var_k':>9} {'random_k':>9} {'step/prompt':>11} {'ins+byte-ev':>11} {'max RSS':>9}"
    )
    print(header)
    for prompts in args.prompts:
        r = bench_store(prompts, args.entries, args.tokens, args.k, args.ops, args.repeats, args.seed)
        print(f"{r['prompts']:>8} {r['entries']:>9} {r['payload_mib']:>7.1f}Mi {r['fill_s']:>7.2f} {r['insert']:>7.2f} "
              f"{r['recent_k']:>9.2f} {r['highest_k']:>9.2f} {r['max_variance_k']:>9.2f} {r['random_k']:>9.2f} "
              f"{r['step']:>11.2f} {r['insert_byte_cap']:>11.2f} {r['max_rss_mib']:>7.0f}Mi", flush=True)

    print("\nmax_variance_k: exact prefix/suffix scan vs brute force over all C(n, k) subsets, CPU microseconds/call")
    print(f"{'n':>4} {'k':>4} {'subsets':>8} {'exact':>9} {'brute':>11} {'speed-up':>9}")
    for r in bench_max_variance(args.variance_sizes, args.repeats, args.seed):
        print(f"{r['n']:>4} {r['k']:>4} {r['subsets']:>8} {r['exact_us']:>9.1f} {r['brute_us']:>11.1f} "
              f"{r['brute_us'] / r['exact_us']:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
