"""The ``hf_cpu`` rollout's generation under three glibc malloc settings, each in a fresh process.

- ``default``: glibc's own (dynamic mmap threshold);
- ``demo``: ``make demo``'s ``MALLOC_ARENA_MAX=2``, ``MALLOC_MMAP_THRESHOLD_`` and
  ``MALLOC_TRIM_THRESHOLD_`` of 1 MiB (``repo_ext.demo.MALLOC_ENV``), which every Ray worker of the
  demo inherits;
- ``demo+heap``: the same variables, then ``repo_ext.cpu.malloc.keep_freed_blocks_in_heap()`` as
  the rollout server calls it at start.

Every process generates the same requests with ``HFBatchGenerator`` (what the server runs, per-token
log-probs included): the demo's held-out prompts, temperature 0.7, ``--max-new-tokens`` with EOS
ignored (every round decodes the same number of steps), seeded per request. Rounds of the three
settings alternate so that they see the same machine load; each round prints seconds, tokens/s
and the load average.

    .venv/bin/python benchmarks/bench_generation_malloc.py [--rounds 2] [--problems 32] [--max-new-tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from repo_ext.demo import MALLOC_ENV  # light: the demo module imports no torch or verl

SETTINGS = ("default", "demo", "demo+heap")

_CHILD = r"""
import json, os, sys, time
import torch
args = json.loads(sys.argv[1])
if args["keep_in_heap"]:
    from repo_ext.cpu.malloc import keep_freed_blocks_in_heap
    assert keep_freed_blocks_in_heap()
torch.set_num_threads(args["threads"])
from transformers import AutoModelForCausalLM, AutoTokenizer
from repo_ext.assets.smollm2 import build_smollm2
from repo_ext.cpu.hf_generation import GenerationRequest, HFBatchGenerator, SamplingSettings
from repo_ext.evaluation.cli import encode_prompts
from repo_ext.evaluation.benchmarks import load_benchmark
path = build_smollm2()
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
generator = HFBatchGenerator(model, eos_token_ids={tokenizer.eos_token_id}, pad_token_id=tokenizer.pad_token_id)
prompts = encode_prompts(tokenizer, load_benchmark("arithmetic_test", limit=args["problems"], seed=0, prompt_style="instruction"))
sampling = SamplingSettings(temperature=0.7, ignore_eos=True)
requests = [GenerationRequest(prompt_ids=p, max_tokens=args["max_new_tokens"], sampling=sampling, logprobs=True, seed=i)
            for i, p in enumerate(prompts)]
start = time.perf_counter()
with torch.no_grad():
    out = generator.generate(requests)
seconds = time.perf_counter() - start
print(json.dumps({"tokens": sum(len(r.token_ids) for r in out), "seconds": seconds}))
"""

def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_round(setting: str, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if setting != "default":
        env.update(MALLOC_ENV)
    child_args = {"threads": args.threads, "problems": args.problems, "max_new_tokens": args.max_new_tokens,
                  "keep_in_heap": setting == "demo+heap"}
    load = _load()
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(child_args)], env=env, capture_output=True,
                          text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"setting {setting}: the generating process failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"setting": setting, **result, "tokens_per_s": result["tokens"] / result["seconds"], "loadavg": load}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--problems", type=int, default=32, help="requests per generate call (one batch)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default=None, help="write every round and the summary here")
    args = parser.parse_args(argv)
    for name in ("rounds", "problems", "max_new_tokens", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    rounds = []
    for r in range(args.rounds):
        for setting in SETTINGS:
            row = run_round(setting, args)
            rounds.append({"round": r, **row})
            print(f"round {r} {setting:<10} {row['tokens']} tokens {row['seconds']:6.1f} s {row['tokens_per_s']:6.1f} tok/s"
                  f"  (load average {row['loadavg']})", flush=True)
    summary = {s: statistics.median(x["seconds"] for x in rounds if x["setting"] == s) for s in SETTINGS}
    for s in SETTINGS:
        print(f"{s:<10} median {summary[s]:.1f} s  ({summary[s] / summary['default']:.2f} x default)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": rounds, "median_seconds": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
