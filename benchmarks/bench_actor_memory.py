"""Peak memory and time of one actor update on SmolLM2-135M (float32, CPU), per setting.

What the demo's actor does in each step, without verl around it: forward + backward over the step's
rows in micro-batches (log-probs of the response tokens, a policy-gradient loss), gradient clipping,
one AdamW step. Each setting runs in its own process with the demo's glibc settings
(repo_ext.demo.MALLOC_ENV) and thread count; that process's peak RSS (``ru_maxrss``: a single
process, so its private memory) and the seconds of each update are printed, two updates per setting
(the first allocates AdamW's moments; the second is the steady state the demo repeats).

    .venv/bin/python benchmarks/bench_actor_memory.py                  # the settings compared in docs/cpu.md
    .venv/bin/python benchmarks/bench_actor_memory.py --only rows=2,foreach=0,ckpt=0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SETTINGS = [
    "rows=2,foreach=1,ckpt=0",  # the demo before commit 0a11adf (torch's default AdamW: foreach)
    "rows=2,foreach=0,ckpt=0",
    "rows=1,foreach=0,ckpt=0",
    "rows=2,foreach=0,ckpt=1",
]


def parse_setting(text: str) -> dict:
    out = {}
    for part in text.split(","):
        key, value = part.split("=")
        if key not in ("rows", "foreach", "ckpt"):
            raise SystemExit(f"--only: unknown key {key!r} in {text!r}; keys are rows, foreach, ckpt")
        out[key] = int(value)
    return out


def child(setting: dict, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from repo_ext.assets.smollm2 import build_smollm2

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(build_smollm2(), dtype=torch.float32, attn_implementation="sdpa")
    if setting["ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01, foreach=bool(setting["foreach"]))
    seq = args.prompt_tokens + args.response_tokens
    ids = torch.randint(0, model.config.vocab_size, (args.batch_rows, seq))
    adv = torch.randn(args.batch_rows)
    times = []
    for _ in range(args.updates):
        t0 = time.perf_counter()
        for start in range(0, args.batch_rows, setting["rows"]):
            mb = ids[start : start + setting["rows"]]
            logits = model(input_ids=mb).logits[:, args.prompt_tokens - 1 : -1].float()
            target = mb[:, args.prompt_tokens :]
            logp = torch.gather(logits, -1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
            loss = -(logp * adv[start : start + setting["rows"], None]).mean() * mb.shape[0] / args.batch_rows
            loss.backward()
            del logits, logp, loss
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_gib": peak_kib / 1024**2, "update_s": times}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", help="a setting like rows=2,foreach=0,ckpt=0 (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-rows", type=int, default=16, help="rows per update (memory does not depend on it: gradients accumulate over micro-batches)")
    p.add_argument("--prompt-tokens", type=int, default=150)
    p.add_argument("--response-tokens", type=int, default=64)
    p.add_argument("--updates", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(parse_setting(args.child), args)))
        return 0

    from repo_ext.demo import MALLOC_ENV

    settings = args.only or SETTINGS
    results = {}
    print(f"SmolLM2-135M float32, {args.batch_rows} rows x ({args.prompt_tokens} + {args.response_tokens}) tokens, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    for text in settings:
        parse_setting(text)
        env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, __file__, "--child", text, "--threads", str(args.threads),
               "--batch-rows", str(args.batch_rows), "--prompt-tokens", str(args.prompt_tokens),
               "--response-tokens", str(args.response_tokens), "--updates", str(args.updates)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"setting {text} failed:\n{done.stderr[-3000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["load_average_after"] = os.getloadavg()[0]
        results[text] = r
        print(f"{text:28s} peak RSS {r['peak_rss_gib']:.2f} GiB   updates "
              + " ".join(f"{t:.1f}" for t in r["update_s"]) + f" s   (load {r['load_average_after']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
