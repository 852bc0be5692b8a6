"""CPU rollout benchmark: the ``hf_cpu`` rollout server against plain batched HF ``generate``,
and the peak memory of a whole 2-step GRPO run on CPU.

1. Throughput. The same N prompts (default 32) are generated twice:
   - baseline: one ``model.generate`` call on the left-padded batch, in this process;
   - hf_cpu: N concurrent ``generate`` requests to the rollout server (a Ray actor), the way verl's
     agent loop sends them; the server batches them and also computes per-token log-probs.
   Both sample at temperature 1 with EOS ignored, so every request makes exactly --max-tokens tokens,
   and both use the same number of torch threads. Reported: tokens/s (best of --repeats) and the
   ratio hf_cpu / baseline (target >= 0.8).
2. Peak RAM. ``python -m verl.trainer.main_ppo +preset=cpu`` runs 2 GRPO steps on the tiny model
   (4 prompts x 2 samples x 16 tokens, with the reference model) while the process tree (driver,
   Ray daemons, every Ray worker) is sampled every 0.5 s; reported are the peak of the summed RSS and
   of the summed PSS (PSS splits shared pages between processes, so it does not double count).

Run:  .venv/bin/python benchmarks/bench_cpu_rollout.py [--model tiny|smollm2|PATH] [--skip-run]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch


def _resolve_model(name: str, work: Path) -> Path:
    if name == "tiny":
        from repo_ext.assets.tiny_model import build_tiny_model

        return build_tiny_model(work / "tiny_model")
    if name == "smollm2":
        from repo_ext.assets.smollm2 import build_smollm2

        return build_smollm2()
    path = Path(name)
    if not (path / "config.json").exists():
        raise SystemExit(f"--model: expected 'tiny', 'smollm2' or an HF model folder, got {name!r}")
    return path


def _prompts(tokenizer, n: int) -> list[list[int]]:
    prompts = []
    for i in range(n):
        messages = [{"role": "user", "content": f"What is {i % 10} + {(3 * i) % 10}? Think step by step."}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return prompts


class PlainGenerate:
    """The baseline: one ``model.generate`` call on the left-padded batch, in this process."""

    def __init__(self, model_path: Path, prompts, max_tokens: int, threads: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        torch.set_num_threads(threads)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.float32, attn_implementation="sdpa"
        ).eval()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.width = max(map(len, prompts))
        self.input_ids = torch.full((len(prompts), self.width), pad)
        self.mask = torch.zeros((len(prompts), self.width), dtype=torch.long)
        for row, p in enumerate(prompts):
            self.input_ids[row, self.width - len(p) :] = torch.tensor(p)
            self.mask[row, self.width - len(p) :] = 1
        # no EOS: every row makes exactly max_tokens tokens
        self.config = GenerationConfig(
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_tokens, pad_token_id=pad,
            eos_token_id=None,
        )

    def tokens_per_second(self) -> float:
        with torch.no_grad():
            start = time.perf_counter()
            out = self.model.generate(input_ids=self.input_ids, attention_mask=self.mask, generation_config=self.config)
            seconds = time.perf_counter() - start
        return (out.shape[1] - self.width) * out.shape[0] / seconds


class HFCpuServerClient:
    """The hf_cpu rollout server in a Ray actor, sent all requests concurrently like verl's agent loop."""

    def __init__(self, model_path: Path, prompts, max_tokens: int, threads: int):
        import ray
        from verl.workers.config import HFModelConfig, RolloutConfig

        from repo_ext.cpu.hf_rollout import HFRolloutServer

        self.ray = ray
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
        rollout = RolloutConfig(
            name="hf_cpu",
            tensor_model_parallel_size=1,
            prompt_length=max(map(len, prompts)),
            response_length=max_tokens,
            dtype="float32",
            engine_kwargs={"hf_cpu": {"num_threads": threads}},
        )
        self.server = (
            ray.remote(HFRolloutServer)
            .options(num_cpus=0, max_concurrency=1000)
            .remote(config=rollout, model_config=HFModelConfig(path=str(model_path)), replica_rank=0)
        )
        self.prompts = prompts
        self.sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0,
                         "logprobs": True, "ignore_eos": True, "max_tokens": max_tokens}

    def tokens_per_second(self) -> float:
        start = time.perf_counter()
        refs = [
            self.server.generate.remote(prompt_ids=p, sampling_params=dict(self.sampling), request_id=str(i))
            for i, p in enumerate(self.prompts)
        ]
        outputs = self.ray.get(refs, timeout=900)
        seconds = time.perf_counter() - start
        return sum(len(o.token_ids) for o in outputs) / seconds

    def batch_sizes(self) -> list[int]:
        return self.ray.get(self.server.get_batch_sizes.remote())

    def close(self) -> None:
        self.ray.shutdown()


def bench_run_memory(work: Path, model_path: Path) -> dict:
    from repo_ext.cpu.tiny_run import run_main_ppo, tiny_grpo_overrides, write_arithmetic_parquet

    train = write_arithmetic_parquet(work / "data" / "train.parquet", num_prompts=8)
    overrides = tiny_grpo_overrides(model_path, train, work / "run", use_kl_loss=True)
    peaks = {"rss": 0, "pss": 0, "processes": 0}
    stop = threading.Event()

    def sample(root: psutil.Process) -> None:
        while not stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            for proc in tree:
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            peaks["rss"] = max(peaks["rss"], rss)
            peaks["pss"] = max(peaks["pss"], pss)
            peaks["processes"] = max(peaks["processes"], len(tree))
            stop.wait(0.5)

    sampler: list[threading.Thread] = []

    def on_start(proc) -> None:
        thread = threading.Thread(target=sample, args=(psutil.Process(proc.pid),), daemon=True)
        thread.start()
        sampler.append(thread)

    try:
        result = run_main_ppo(overrides, timeout_s=600, log_path=work / "run" / "main_ppo.log", on_start=on_start)
    finally:
        stop.set()
        for thread in sampler:
            thread.join(timeout=5)
    return {**peaks, "seconds": result.seconds, "log": str(result.log_path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny (default), smollm2, or an HF model folder")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=True) or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-run", action="store_true", help="skip the peak-RAM GRPO run")
    args = parser.parse_args()
    for name in ("requests", "max_tokens", "threads", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    with tempfile.TemporaryDirectory(prefix="bench_cpu_rollout_") as tmp:
        work = Path(tmp)
        model_path = _resolve_model(args.model, work)
        from transformers import AutoTokenizer

        prompts = _prompts(AutoTokenizer.from_pretrained(model_path), args.requests)
        print(f"model {model_path} | {args.requests} requests x {args.max_tokens} new tokens | "
              f"{args.threads} torch threads | prompt lengths {min(map(len, prompts))}-{max(map(len, prompts))}")

        baseline = PlainGenerate(model_path, prompts, args.max_tokens, args.threads)
        server = HFCpuServerClient(model_path, prompts, args.max_tokens, args.threads)
        try:
            baseline.tokens_per_second(), server.tokens_per_second()  # warm-up
            # alternate the two so that load from other processes hits both alike
            rounds = [(baseline.tokens_per_second(), server.tokens_per_second()) for _ in range(args.repeats)]
            batch_sizes = server.batch_sizes()
        finally:
            server.close()
        base_rates, server_rates = zip(*rounds)
        print(f"plain batched generate (one process):         best {max(base_rates):8.1f} tokens/s  "
              f"rounds {[round(r) for r in base_rates]}")
        print(f"hf_cpu server, {args.requests} concurrent requests:     best {max(server_rates):8.1f} tokens/s  "
              f"rounds {[round(r) for r in server_rates]}  (batch sizes of its generate calls: {batch_sizes})")
        ratio = max(server_rates) / max(base_rates)
        median_ratio = statistics.median(s / b for b, s in rounds)
        print(f"ratio hf_cpu / baseline: best-of {ratio:.2f}, median per round {median_ratio:.2f} "
              f"(target >= 0.80: {'met' if min(ratio, median_ratio) >= 0.8 else 'NOT met'})")

        if not args.skip_run:
            tiny = _resolve_model("tiny", work)
            memory = bench_run_memory(work, tiny)
            gib = 2**30
            print(
                f"2-step GRPO run (tiny model, ref model on, main_ppo +preset=cpu): {memory['seconds']:.0f} s wall, "
                f"peak RSS sum {memory['rss'] / gib:.2f} GiB, peak PSS sum {memory['pss'] / gib:.2f} GiB "
                f"over up to {memory['processes']} processes"
            )


if __name__ == "__main__":
    main()
