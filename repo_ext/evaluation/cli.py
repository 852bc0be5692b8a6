"""Score a model on math benchmarks: ``python -m repo_ext.evaluation --model PATH ...``.

``PATH`` is a Hugging Face folder or a verl checkpoint (its root, a ``global_step_<N>`` folder or
the ``actor/`` folder; FSDP shards are merged with verl's model merger, see
:mod:`repo_ext.evaluation.checkpoint`).

Defaults are the paper's evaluation: temperature 0.2, top_p 0.95, top_k 50, 2048 new tokens,
the model's chat template, math-verify grading (:func:`repo_ext.data.reward.compute_score`).
For each benchmark it reports pass@1 as avg@n (mean accuracy over the n samples of every
problem) and the unbiased pass@k for k in ``--pass-k`` (default 1, 2, 4, ..., n), prints a
Markdown table and, with ``--out``, writes everything as JSON (after every benchmark, so a long
run that is stopped keeps what it finished).

Examples::

    # CPU, a quick look: 32 problems each (docs/evaluation.md has the measured numbers)
    python -m repo_ext.evaluation --model ~/.cache/repo_ext/SmolLM2-135M-Instruct \\
        --benchmarks math500,gsm8k_test,arithmetic_test --limit 32 --max-new-tokens 256 \\
        --threads 1 --out before.json

    # GPUs, the paper's protocol (n=32 for AIME/AMC, files you have)
    python -m repo_ext.evaluation --model checkpoints/repo/qwen2.5-math-1.5b-repo-recent_k \\
        --backend vllm --prompt-style raw --benchmarks math500,gsm8k_test,minerva
    python -m repo_ext.evaluation --model ... --backend vllm --prompt-style raw --n 32 \\
        --benchmarks none --benchmark-file aime24=aime24.jsonl --benchmark-file amc23=amc23.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from repo_ext.evaluation.benchmarks import (
    DEFAULT_BENCHMARKS,
    PROMPT_STYLES,
    Problem,
    load_benchmark,
    load_benchmark_file,
    parse_benchmark_file_arg,
)
from repo_ext.evaluation.checkpoint import resolve_model_dir
from repo_ext.evaluation.generation import DTYPES, Completion, SamplingSettings
from repo_ext.evaluation.metrics import default_pass_ks, summarize_correctness

__all__ = ["build_parser", "main", "run_evaluation", "score_completions", "format_table", "encode_prompts"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m repo_ext.evaluation",
        description="Evaluate a model (HF folder or verl checkpoint) on math benchmarks with math-verify.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="HF model folder, or a verl checkpoint root / global_step_N / actor folder")
    parser.add_argument(
        "--benchmarks",
        default=",".join(DEFAULT_BENCHMARKS),
        help="comma-separated built-in benchmarks (math500, gsm8k_test, minerva, math_level5, arithmetic_test, ...); 'none' for only --benchmark-file",
    )
    parser.add_argument(
        "--benchmark-file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a benchmark from a jsonl file with question (or problem) and answer fields; repeatable",
    )
    parser.add_argument("--limit", type=int, default=None, help="problems per benchmark, a seeded random subset; unset: all")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of the --limit subset")
    parser.add_argument("--prompt-style", choices=PROMPT_STYLES, default="instruction", help="instruction: question + 'output the final answer within \\boxed{}'; raw: the question alone (the paper's)")
    parser.add_argument("--n", type=int, default=1, help="samples per problem (pass@1 is their mean accuracy, avg@n)")
    parser.add_argument("--pass-k", default=None, help="comma-separated k for pass@k; unset: 1,2,4,...,n")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1 disables it")
    parser.add_argument("--top-k", type=int, default=50, help="<= 0 disables top-k")
    parser.add_argument("--max-new-tokens", type=int, default=2048, help="longest answer, in tokens")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="hf: transformers generate (CPU or one GPU); vllm: vLLM on GPUs")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype for generation (auto: as stored on a GPU, float32 on a CPU)")
    parser.add_argument("--batch-size", type=int, default=32, help="hf backend: sequences per generate call (prompts x n)")
    parser.add_argument("--device", default=None, help="hf backend: torch device; unset: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="hf backend: torch CPU threads; unset: one per core (use 1 on a busy shared machine)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm backend")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm backend")
    parser.add_argument("--merged-dir", default=None, help="where to merge an FSDP checkpoint's shards; unset: <actor>/huggingface_merged")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--save-responses", action="store_true", help="include every response, its score and length in the JSON")
    return parser


def _parse_ks(text: str | None, n: int) -> list[int]:
    if text is None:
        return default_pass_ks(n)
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as error:
        raise ValueError(f"--pass-k {text!r}: expected comma-separated integers, e.g. 1,4,8") from error
    bad = [k for k in ks if not 1 <= k <= n]
    if not ks or bad:
        raise ValueError(f"--pass-k {text!r}: every k must be in [1, --n={n}] (got {bad or 'none'})")
    return ks


def load_problems(args: argparse.Namespace) -> dict[str, list[Problem]]:
    """Every requested benchmark's problems, loaded before the model so bad names fail fast."""
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    names = [] if args.benchmarks.strip().lower() == "none" else [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    files = [parse_benchmark_file_arg(value) for value in args.benchmark_file]
    duplicates = sorted({n for n in names + [f[0] for f in files] if (names + [f[0] for f in files]).count(n) > 1})
    if duplicates:
        raise ValueError(f"benchmark names must be unique, repeated: {duplicates}")
    if not names and not files:
        raise ValueError("no benchmark selected: pass --benchmarks and/or --benchmark-file NAME=path.jsonl")
    problems = {
        name: load_benchmark(name, limit=args.limit, seed=args.subset_seed, prompt_style=args.prompt_style)
        for name in names
    }
    for name, path in files:
        problems[name] = load_benchmark_file(name, path, limit=args.limit, seed=args.subset_seed, prompt_style=args.prompt_style)
    return problems


def encode_prompts(tokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    """Chat-templated prompt token ids (``add_generation_prompt=True``), as verl's agent loop builds them."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer of {tokenizer.name_or_path} has no chat template; the evaluation prompts are chat "
            f"messages (use an instruct/chat model folder or add a chat_template to tokenizer_config.json)"
        )
    encoded = []
    for problem in problems:
        ids = tokenizer.apply_chat_template(list(problem.messages), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        encoded.append([int(i) for i in ids])
    return encoded


def score_completions(problems: Sequence[Problem], completions: Sequence[Sequence[Completion]]) -> list[list[float]]:
    """The reward of every completion (``compute_score``: 1.0 correct, 0.0 otherwise)."""
    from repo_ext.data.reward import compute_score

    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
    return [
        [
            float(compute_score(problem.data_source, sample.text, problem.ground_truth, extra_info={"index": problem.index}))
            for sample in samples
        ]
        for problem, samples in zip(problems, completions)
    ]


def summarize_benchmark(problems, completions, scores, ks, seconds: float) -> dict:
    """pass@1/pass@k plus diagnostics: mean response length, the fraction cut at max_new_tokens,
    and the fraction with an answer the grader can read at all (a final ``\\boxed{}``; for
    arithmetic also a last number) -- a model that never boxes scores 0 whatever it computes."""
    from repo_ext.data.reward import final_answer

    summary = summarize_correctness([[score >= 1.0 for score in row] for row in scores], ks)
    tokens = [sample.num_tokens for samples in completions for sample in samples]
    summary["pass@1"] = summary["avg@n"]
    summary["answered_fraction"] = sum(
        final_answer(problem.data_source, sample.text) is not None
        for problem, samples in zip(problems, completions)
        for sample in samples
    ) / len(tokens)
    summary["mean_response_tokens"] = sum(tokens) / len(tokens)
    summary["truncated_fraction"] = sum(s.truncated for samples in completions for s in samples) / len(tokens)
    summary["seconds"] = round(seconds, 1)
    summary["generated_tokens_per_second"] = round(sum(tokens) / seconds, 1) if seconds > 0 else None
    return summary


def format_table(results: dict) -> str:
    """A Markdown table of the benchmark summaries, with an unweighted average row."""
    benchmarks = results["benchmarks"]
    ks = sorted({int(k) for s in benchmarks.values() for k in s["pass@k"]} - {1})
    header = ["Benchmark", "Problems", "n", "pass@1 (avg@n)", *[f"pass@{k}" for k in ks], "Answered", "Mean tokens", "Truncated"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name, s in benchmarks.items():
        cells = [name, str(s["problems"]), str(s["samples_per_problem"]), f"{100 * s['pass@1']:.1f}"]
        cells += [f"{100 * s['pass@k'][k]:.1f}" if k in s["pass@k"] else "" for k in ks]
        cells += [f"{100 * s['answered_fraction']:.0f}%", f"{s['mean_response_tokens']:.0f}", f"{100 * s['truncated_fraction']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    if len(benchmarks) > 1:
        average = sum(s["pass@1"] for s in benchmarks.values()) / len(benchmarks)
        lines.append("| " + " | ".join(["Average", "", "", f"{100 * average:.1f}", *[""] * len(ks), "", "", ""]) + " |")
    return "\n".join(lines)


def _make_generator(args: argparse.Namespace, model_dir: Path):
    if args.backend == "vllm":
        from repo_ext.evaluation.generation import VLLMGenerator

        return VLLMGenerator(
            model_dir,
            dtype=args.dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            seed=args.seed,
        )
    import torch

    from repo_ext.evaluation.generation import HFGenerator

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return HFGenerator(model_dir, dtype=args.dtype, batch_size=args.batch_size, device=device, threads=args.threads)


def _write_json(path: str | None, results: dict) -> None:
    if path is None:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    partial.replace(target)


def run_evaluation(args: argparse.Namespace) -> dict:
    """Load, generate, grade and summarize; returns the results dict that ``--out`` stores."""
    from transformers import AutoTokenizer

    settings = SamplingSettings(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    ks = _parse_ks(args.pass_k, args.n)
    problems = load_problems(args)
    resolved = resolve_model_dir(args.model, merged_dir=args.merged_dir)
    print(f"model: {resolved.path} ({resolved.kind}); backend {args.backend}; {settings}", file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    prompts = {name: encode_prompts(tokenizer, items) for name, items in problems.items()}
    generator = _make_generator(args, resolved.path)

    results: dict = {
        "model": str(args.model),
        "model_dir": str(resolved.path),
        "model_kind": resolved.kind,
        "backend": args.backend,
        "prompt_style": args.prompt_style,
        "sampling": settings.as_dict(),
        "limit": args.limit,
        "subset_seed": args.subset_seed,
        "benchmarks": {},
    }
    if args.save_responses:
        results["responses"] = {}
    for name, items in problems.items():
        print(f"[{name}] {len(items)} problems x {settings.n} samples, up to {settings.max_new_tokens} new tokens", file=sys.stderr, flush=True)
        started = time.perf_counter()
        completions = generator.generate(prompts[name], settings)
        seconds = time.perf_counter() - started
        scores = score_completions(items, completions)
        summary = summarize_benchmark(items, completions, scores, ks, seconds)
        results["benchmarks"][name] = summary
        print(
            f"[{name}] pass@1 {100 * summary['pass@1']:.1f}%, answered {100 * summary['answered_fraction']:.0f}%  ({seconds:.0f} s, "
            f"{summary['mean_response_tokens']:.0f} tokens/answer, {100 * summary['truncated_fraction']:.0f}% truncated)",
            file=sys.stderr,
            flush=True,
        )
        if args.save_responses:
            results["responses"][name] = [
                {
                    "index": problem.index,
                    "question": problem.question,
                    "ground_truth": problem.ground_truth,
                    "samples": [
                        {"text": s.text, "score": score, "num_tokens": s.num_tokens, "truncated": s.truncated}
                        for s, score in zip(samples, row)
                    ],
                }
                for problem, samples, row in zip(items, completions, scores)
            ]
        _write_json(args.out, results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        results = run_evaluation(args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(format_table(results))
    if args.out:
        print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
