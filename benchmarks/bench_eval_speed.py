"""Evaluation generation against the training rollout's generation: tokens per second, same model.

Both paths get the same prompts (the demo's held-out chain sums, chat template applied), the same
decoding (the evaluation's: temperature 0.2, top_p 0.95, top_k 50), the same number of new
tokens, the same torch threads and one model in this process:

- eval:    ``repo_ext.evaluation.generation.HFGenerator.generate`` (what ``repo_ext.evaluation`` runs),
           weights loaded as ``--eval-dtype`` resolves on this device (``auto``: float32 on CPU);
- rollout: ``repo_ext.cpu.hf_generation.HFBatchGenerator.generate`` (what verl's ``hf_cpu``
           rollout server runs, with per-token log-probs), float32 as ``+preset=cpu`` sets it.

Rounds alternate (eval, rollout, eval, ...) so both see the same machine load; every round prints
its tokens/s (generated tokens up to and including EOS, over wall seconds) and the load average.
Reported: best-of and median rates and the ratio eval / rollout (target >= 1).
``--eval-dtype bfloat16`` reproduces what ``auto`` did before on a checkpoint merged by verl
(bfloat16 weights).

    .venv/bin/python benchmarks/bench_eval_speed.py [--model smollm2|tiny|PATH] [--problems 32]
        [--max-new-tokens 64] [--rounds 3] [--threads N] [--eval-dtype auto|float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _model(name: str, work: Path) -> Path:
    if name == "smollm2":
        from repo_ext.assets.smollm2 import build_smollm2

        return build_smollm2()
    if name == "tiny":
        from repo_ext.assets.tiny_model import build_tiny_model

        return build_tiny_model(work / "tiny_model")
    if not (Path(name) / "config.json").is_file():
        raise SystemExit(f"--model: expected smollm2, tiny or an HF model folder, got {name!r}")
    return Path(name)


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--problems", type=int, default=32, help="held-out arithmetic problems (one batch)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each path, alternated")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for both paths")
    parser.add_argument("--eval-dtype", default="auto", help="the evaluation's --dtype")
    parser.add_argument("--json", default=None, help="write every round and the summary here")
    args = parser.parse_args(argv)
    for name in ("problems", "max_new_tokens", "rounds", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    from transformers import AutoTokenizer

    from repo_ext.cpu.hf_generation import GenerationRequest, HFBatchGenerator
    from repo_ext.cpu.hf_generation import SamplingSettings as RolloutSampling
    from repo_ext.evaluation.cli import encode_prompts
    from repo_ext.evaluation.benchmarks import load_benchmark
    from repo_ext.evaluation.generation import HFGenerator, SamplingSettings, resolve_dtype

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_eval_speed_") as tmp:
        model_dir = _model(args.model, Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        problems = load_benchmark("arithmetic_test", limit=args.problems, seed=0, prompt_style="instruction")
        prompts = encode_prompts(tokenizer, problems)
        settings = SamplingSettings(max_new_tokens=args.max_new_tokens)  # the evaluation's decoding

        evaluator = HFGenerator(model_dir, dtype=args.eval_dtype, batch_size=len(prompts), device="cpu")
        rollout_model = evaluator.model
        if evaluator.model.dtype != torch.float32:  # the rollout runs float32 (+preset=cpu): its own copy
            from transformers import AutoModelForCausalLM

            rollout_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
        rollout = HFBatchGenerator(rollout_model, eos_token_ids=evaluator.eos_token_ids, pad_token_id=evaluator.pad_token_id)
        rollout_sampling = RolloutSampling(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)

        def run_eval() -> tuple[int, int, float]:
            start = time.perf_counter()
            out = evaluator.generate(prompts, settings)
            lengths = [c.num_tokens for samples in out for c in samples]
            return sum(lengths), max(lengths), time.perf_counter() - start

        def run_rollout() -> tuple[int, int, float]:
            requests = [
                GenerationRequest(prompt_ids=p, max_tokens=args.max_new_tokens, sampling=rollout_sampling, logprobs=True)
                for p in prompts
            ]
            start = time.perf_counter()
            with torch.no_grad():
                out = rollout.generate(requests)
            lengths = [len(r.token_ids) for r in out]
            return sum(lengths), max(lengths), time.perf_counter() - start

        print(f"model {model_dir} | eval dtype {resolve_dtype(args.eval_dtype, 'cpu')}, rollout float32 | "
              f"{len(prompts)} prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens) x "
              f"{args.max_new_tokens} new tokens | {args.threads} torch threads | {settings}", flush=True)
        rounds = []
        for r in range(args.rounds):
            for name, fn in (("eval", run_eval), ("rollout", run_rollout)):
                load_before = _load()
                tokens, longest, seconds = fn()
                # the batch runs as many decoding steps as its longest answer: seconds per step
                # compares the two paths' cost per forward pass when their answers differ in length
                rounds.append({"round": r, "path": name, "tokens": tokens, "longest": longest, "seconds": round(seconds, 2),
                               "tokens_per_s": round(tokens / seconds, 2), "s_per_step": round(seconds / longest, 3),
                               "loadavg": load_before})
                print(f"round {r} {name:<8} {tokens:5d} tokens {seconds:7.1f} s  {tokens / seconds:7.1f} tok/s  "
                      f"{longest} steps, {seconds / longest:.3f} s/step  (load average {load_before})", flush=True)

    summary = {}
    for name in ("eval", "rollout"):
        rates = [x["tokens_per_s"] for x in rounds if x["path"] == name]
        summary[name] = {"best": max(rates), "median": statistics.median(rates)}
    summary["ratio_best"] = round(summary["eval"]["best"] / summary["rollout"]["best"], 2)
    summary["ratio_median"] = round(summary["eval"]["median"] / summary["rollout"]["median"], 2)
    print(f"eval    tok/s: best {summary['eval']['best']:.1f}  median {summary['eval']['median']:.1f}")
    print(f"rollout tok/s: best {summary['rollout']['best']:.1f}  median {summary['rollout']['median']:.1f}")
    print(f"eval / rollout: best-of {summary['ratio_best']:.2f}  median {summary['ratio_median']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": rounds, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
