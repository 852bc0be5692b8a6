"""RePO against GRPO side by side on this machine: ``make bench`` (issues 7, 14, 15).

Every arm is one run of verl's stock entry point with the same model, data, seeds and on-policy
sample budget (prompts per step x samples per prompt); the arms differ only in ``algorithm.repo.*``,
except ``stock_grpo``:

- ``stock_grpo``: verl's own GRPO (``--config-name=repo_trainer algorithm=grpo``: verl's sync V1
  trainer, ``adv_estimator=grpo``, the stock loss, no plugin trainer) with the same settings. When it
  runs, every ratio is taken against it. Its per-prompt data come from verl's rollout dump
  (``trainer.rollout_data_dir``);
- ``recent_k_skip`` / ``recent_k_noskip``: RePO ``recent_k`` with
  ``algorithm.repo.skip_zero_advantage_rows=true`` / ``false`` (issue 14);

- ``grpo``: ``strategy=none``: the RePO trainer without replay, which is exactly GRPO (tested in
  ``tests/integration/test_e2e_repo_cpu.py::test_strategy_none_is_grpo``). It is used instead of
  ``algorithm=grpo`` because verl's stock trainer does not log the fraction of groups with a
  non-zero advantage, and because then the two arms run the same code except for replay;
- ``recent_k``, ``highest_k``, ``max_variance_k``, ``random_k``: RePO with split advantages;
- ``mixed_recent_k``: RePO, ``recent_k``, mixed advantages (the paper's ablation).

The rollout seed (``actor_rollout_ref.rollout.seed``) is the benchmark's seed in every arm: the
seeded CPU rollout then gives the arms the same rollouts until their weights first differ.
Per prompt and step (a "prompt-step") the script keeps whether the prompt's on-policy group and its
replayed group had a non-zero advantage, and its mean reward (RePO arms: the trainer's
``REPO_EXT_DUMP_DIR`` dump; ``stock_grpo``: verl's rollout dump), for the 95% intervals of
``benchmarks/confidence.py``. ``--preset paper-question`` is the run of issue 15; ``--dry-run``
prints a plan (arms, steps, expected duration) without training.

Arms run one after the other (never in parallel: the timings compare). Per step it records the
mean reward, the fractions of prompts whose group has a non-zero advantage (on-policy, replayed,
either), the step time split into verl's phases plus the replay store's own work, the tokens, and
the peak RSS of the run's process tree (sampled with psutil while the run goes). After each arm it
scores the final checkpoint on held-out problems and rewrites the results (JSON, Markdown, PNG),
so a stopped benchmark keeps the arms it finished.

Examples::

    make bench                                            # the committed run (SmolLM2-135M, CPU)
    .venv/bin/python benchmarks/bench_repo_vs_grpo.py --arms grpo,recent_k --steps 2
    .venv/bin/python benchmarks/bench_repo_vs_grpo.py --model tiny --arms grpo,recent_k --steps 1 --skip-eval
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
#: run 2 of docs/benchmarks.md (quiet machine, load average 1.3-1.5): the default timing basis of --dry-run
DEFAULT_CALIBRATION = REPO_ROOT / "benchmarks" / "results" / "grpo_vs_recent_k_4x4" / "bench_repo_vs_grpo.json"

#: arm name -> algorithm.repo settings that differ between arms
ARMS: dict[str, dict[str, str]] = {
    "grpo": {"strategy": "none", "advantage_mode": "split"},
    "stock_grpo": {},  # verl's own trainer: no algorithm.repo settings
    "recent_k": {"strategy": "recent_k", "advantage_mode": "split"},
    "recent_k_skip": {"strategy": "recent_k", "advantage_mode": "split", "skip_zero_advantage_rows": "true"},
    "recent_k_noskip": {"strategy": "recent_k", "advantage_mode": "split", "skip_zero_advantage_rows": "false"},
    "highest_k": {"strategy": "highest_k", "advantage_mode": "split"},
    "max_variance_k": {"strategy": "max_variance_k", "advantage_mode": "split"},
    "random_k": {"strategy": "random_k", "advantage_mode": "split"},
    "mixed_recent_k": {"strategy": "recent_k", "advantage_mode": "mixed"},
}
STOCK_GRPO = "stock_grpo"
#: arms without replay
GRPO_ARMS = ("grpo", STOCK_GRPO)


def baseline_of(arm_names) -> str | None:
    """The arm every ratio is taken against: verl's stock GRPO when it ran, else the plugin's GRPO."""
    for name in (STOCK_GRPO, "grpo"):
        if name in arm_names:
            return name
    return None


#: the paper's numbers (Qwen3-1.7B, G_on = G_off = 8), the yardstick for the printed ratios
PAPER = {"effective_step_ratio": 46.1 / 31.2, "step_time_ratio": 1.15, "store_share_target": 0.02}
PAPER_LINE = (
    f"paper, Qwen3-1.7B: effective steps x{PAPER['effective_step_ratio']:.2f}, step time x{PAPER['step_time_ratio']:.2f}; "
    f"store share target < {100 * PAPER['store_share_target']:.0f}%"
)

# verl's timing keys (seconds per step) and what the tables call them
PHASES = {
    "gen": "timing_s/gen",
    "old_log_prob": "timing_s/old_log_prob",
    "update": "timing_s/update_actor",
    "repo_store": "timing_s/repo_store",
}


@dataclass
class BenchSettings:
    model: str  # "smollm2", "tiny" or an HF model folder
    steps: int
    train_prompts: int
    prompts_per_step: int
    samples: int
    response_length: int
    eval_problems: int
    eval_max_new_tokens: int
    lr: float
    seed: int
    temperature: float = 1.0
    #: rows per forward/backward pass (actor update and old log-probs), the same in every arm;
    #: zero-advantage skipping only saves work when whole micro-batches fall away (CPU runs pad
    #: every row of a micro-batch to its longest)
    micro_batch_size: int = 16
    #: training prompts: a source of repo_ext.data (the held-out problems are always arithmetic_test)
    train_source: str = "arithmetic"
    #: torch threads of verl's workers (actor and CPU rollout) in every arm; 0 = one per core
    threads: int = 0
    #: arm -> training steps, where an arm runs other than ``steps``
    arm_steps: dict = field(default_factory=dict)
    eval_base: bool = False

    def steps_of(self, arm: str) -> int:
        return int(self.arm_steps.get(arm, self.steps))


#: ``--preset NAME``: defaults for a named run (flags given on the command line still win)
PRESETS: dict[str, dict] = {
    # issue 15: the paper's group sizes (G_on = G_off = 8), recent_k, split advantages, 4 prompts x 8
    # samples per step as the paper's scripts; 24 training prompts (an epoch is 6 steps); gate of 8 =
    # a prompt's second visit (the paper: 16, the third). RePO (with skipping) first: steps 7-56 replay,
    # 50 x 4 = 200 prompt-steps; then stock GRPO, 25 steps = 100 prompt-steps (76 in steps 7-25).
    # Training questions: chain sums of exactly 2 one-digit terms (arithmetic_2terms), on which
    # SmolLM2 at temperature 0.4 is right 46% of the time (48 questions x 4 samples, 48 tokens); on
    # 2-3 terms it was 17% (8 questions x 8 samples, 96 tokens). The 128 held-out problems are
    # arithmetic_test (2-3 terms, disjoint from every training question).
    "paper-question": dict(
        arms="recent_k_skip,stock_grpo", model="smollm2", steps=56, arm_steps="stock_grpo=25",
        train_prompts=24, train_source="arithmetic_2terms", prompts_per_step=4, samples=8, response_length=48, temperature=0.4,
        eval_problems=128, eval_max_new_tokens=48, eval_base=True, lr=2e-6, seed=0,
        out=str(REPO_ROOT / "benchmarks" / "results" / "paper_question"), work_dir="/tmp/bench_paper_question",
        run_timeout=4 * 3600.0,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/bench_repo_vs_grpo.py",
        description="GRPO and RePO (each retrieval strategy, split and mixed advantages) side by side on CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="defaults of a named run (see PRESETS)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (arms, steps, expected duration) and exit")
    parser.add_argument(
        "--calibration", default=str(DEFAULT_CALIBRATION),
        help="a results JSON of an earlier run (quiet machine) whose per-row phase times --dry-run scales",
    )
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, run in this order; from {list(ARMS)}")
    parser.add_argument("--model", default="smollm2", help="smollm2 (SmolLM2-135M-Instruct), tiny (smoke tests) or an HF folder")
    parser.add_argument("--steps", type=int, default=3, help="training steps per arm")
    parser.add_argument("--arm-steps", default="", help="per-arm steps where they differ from --steps, e.g. stock_grpo=31")
    parser.add_argument("--temperature", type=float, default=1.0, help="rollout temperature (training)")
    parser.add_argument("--eval-base", action="store_true", help="also score the untrained model on the held-out problems")
    parser.add_argument("--train-prompts", type=int, default=2, help="prompts in the training set")
    parser.add_argument(
        "--train-source", default="arithmetic", choices=("arithmetic", "arithmetic_2terms"),
        help="training questions (repo_ext.data): one-digit chain sums of 2-3 terms, or of exactly 2 (easier); "
        "with --model tiny the tiny run's own arithmetic data",
    )
    parser.add_argument("--prompts-per-step", type=int, default=2, help="data.train_batch_size")
    parser.add_argument("--samples", type=int, default=4, help="G_on = G_off = min_cache_to_replay")
    parser.add_argument("--response-length", type=int, default=48, help="max new tokens per training response")
    parser.add_argument(
        "--micro-batch-size", type=int, default=16,
        help="rows per actor forward/backward and old-log-prob pass (every arm; capped at the step's rows)",
    )
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch threads of verl's actor and CPU rollout (OMP_NUM_THREADS; Ray gives a worker 1 where it is unset); 0: one per core",
    )
    parser.add_argument("--eval-problems", type=int, default=16, help="held-out arithmetic_test problems per arm")
    parser.add_argument("--eval-max-new-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-6, help="actor learning rate (constant)")
    parser.add_argument("--seed", type=int, default=0, help="data and sampling seed, the same for every arm")
    parser.add_argument("--skip-eval", action="store_true", help="no held-out evaluation (and no checkpoint)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"), help="results folder (JSON, MD, PNG)")
    parser.add_argument("--work-dir", default="/tmp/bench_repo_vs_grpo", help="scratch: data, checkpoints, verl logs")
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="seconds before one arm's training is killed")
    parser.add_argument("--from-json", default=None, help="only re-render the reports (MD, PNG, ratios) from a results JSON into --out")
    parser.add_argument("--rss-interval", type=float, default=1.0, help="seconds between RSS samples")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments; with ``--preset`` its values become the defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset:
        parser.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    return args


def parse_arm_steps(text: str, arms: list[str]) -> dict[str, int]:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in arms or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--arm-steps={text!r}: expected ARM=STEPS pairs (STEPS >= 1) for arms of --arms {arms}")
        out[name] = int(value)
    return out


def parse_arms(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise SystemExit(f"--arms={text!r}: unknown arm(s) {unknown}; choose from {list(ARMS)}")
    if len(set(arms)) != len(arms):
        raise SystemExit(f"--arms={text!r} names an arm twice")
    return arms


def settings_from_args(args: argparse.Namespace, arms: list[str] | None = None) -> BenchSettings:
    for name in (
        "steps", "train_prompts", "prompts_per_step", "eval_problems", "eval_max_new_tokens", "response_length",
        "micro_batch_size",
    ):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.samples < 2:
        raise SystemExit(f"--samples={args.samples}: group advantages need at least 2 samples per prompt")
    if args.train_prompts % args.prompts_per_step:
        raise SystemExit(
            f"--train-prompts={args.train_prompts} must be a multiple of --prompts-per-step={args.prompts_per_step} "
            "(every prompt then comes back at the same rate)"
        )
    return BenchSettings(
        model=args.model, steps=args.steps, train_prompts=args.train_prompts, prompts_per_step=args.prompts_per_step,
        samples=args.samples, response_length=args.response_length, eval_problems=args.eval_problems,
        eval_max_new_tokens=args.eval_max_new_tokens, lr=args.lr, seed=args.seed, temperature=args.temperature,
        arm_steps=parse_arm_steps(args.arm_steps, arms or list(ARMS)), eval_base=args.eval_base,
        micro_batch_size=args.micro_batch_size, train_source=args.train_source, threads=args.threads,
    )


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------- set-up


@dataclass
class Setup:
    """What every arm shares: model folder, training data and reward function."""

    model_dir: Path
    train_file: Path
    reward_path: str
    max_prompt_length: int


def prepare(s: BenchSettings, work: Path) -> Setup:
    if s.model == "tiny":
        from repo_ext.assets.tiny_model import build_tiny_model
        from repo_ext.cpu.tiny_run import reward_function_path, write_arithmetic_parquet

        model = build_tiny_model(work / "tiny_model", seed=s.seed)
        train = write_arithmetic_parquet(work / "data" / "train.parquet", num_prompts=s.train_prompts, seed=s.seed)
        return Setup(Path(model), Path(train), str(reward_function_path()), 64)
    from repo_ext.data import load_rows, write_parquet
    from repo_ext.data.prompt_length import prompt_length_for

    if s.model == "smollm2":
        from repo_ext.assets.smollm2 import build_smollm2

        model = Path(build_smollm2())
    else:
        model = Path(s.model).resolve()
        if not (model / "config.json").exists():
            raise SystemExit(f"--model={s.model}: not 'smollm2', 'tiny' or an HF model folder (no config.json)")
    rows = load_rows(s.train_source, limit=s.train_prompts, seed=s.seed)
    train = write_parquet(rows, work / "data" / "train.parquet")
    # verl pads prompts to data.max_prompt_length and the CPU actor computes over the padding: with
    # a fixed 256 for ~65-token prompts, a step of the paper-question preset took 100 s, 55 s of it the update
    return Setup(model, Path(train), "pkg://repo_ext.data.reward", prompt_length_for(model, rows))


def arm_overrides(s: BenchSettings, setup: Setup, arm: str, out: Path, save: bool) -> list[str]:
    """``main_ppo`` overrides of one arm. RePO arms differ only in ``algorithm.repo.*``;
    ``stock_grpo`` is ``algorithm=grpo`` (verl's trainer and loss) with everything else the same.

    G_off = G_on = samples and min_cache_to_replay = samples: a prompt's first visit fills its
    buffer, replay starts on its second visit (the paper: 16 = two visits of 8, so the third).
    Rollout dumps for the per-prompt-step data: ``trainer.rollout_data_dir`` (stock GRPO) here, the
    RePO trainer's ``REPO_EXT_DUMP_DIR`` in :func:`train_arm`.
    """
    rows = s.prompts_per_step * s.samples
    steps = s.steps_of(arm)
    if arm == STOCK_GRPO:
        algorithm = ["--config-name=repo_trainer", "+preset=cpu", "algorithm=grpo", f"trainer.rollout_data_dir={out / 'rollouts'}"]
    else:
        repo = ARMS[arm]
        algorithm = [
            "--config-name=repo_trainer",
            "+preset=cpu",
            "algorithm=repo",
            f"algorithm.repo.strategy={repo['strategy']}",
            f"algorithm.repo.advantage_mode={repo['advantage_mode']}",
            f"algorithm.repo.num_replays={s.samples}",
            f"algorithm.repo.min_cache_to_replay={s.samples}",
            f"algorithm.repo.max_cache_size={2 * s.samples}",
            f"algorithm.repo.seed={s.seed}",
            *([f"algorithm.repo.skip_zero_advantage_rows={repo['skip_zero_advantage_rows']}"]
              if "skip_zero_advantage_rows" in repo else []),
        ]
    return [
        *algorithm,
        f"actor_rollout_ref.model.path={setup.model_dir}",
        f"data.train_files={setup.train_file}",
        f"data.val_files={setup.train_file}",
        f"data.train_batch_size={s.prompts_per_step}",
        f"data.max_prompt_length={setup.max_prompt_length}",
        f"data.max_response_length={s.response_length}",
        f"data.seed={s.seed}",
        f"actor_rollout_ref.rollout.n={s.samples}",
        f"actor_rollout_ref.rollout.temperature={s.temperature}",
        f"actor_rollout_ref.rollout.seed={s.seed}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={s.prompts_per_step}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={min(rows, s.micro_batch_size)}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={min(rows, s.micro_batch_size)}",
        f"actor_rollout_ref.rollout.engine_kwargs.hf_cpu.num_threads={worker_threads(s)}",
        f"actor_rollout_ref.actor.optim.lr={s.lr}",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=constant",
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0",
        f"reward.custom_reward_function.path={setup.reward_path}",
        "reward.custom_reward_function.name=compute_score",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        f"trainer.save_freq={steps if save else -1}",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=1000",
        "trainer.resume_mode=disable",
        "trainer.logger=[console,file]",
        "trainer.project_name=bench_repo_vs_grpo",
        f"trainer.experiment_name={arm}",
        f"trainer.default_local_dir={out / 'checkpoints'}",
    ]


# ---------------------------------------------------------------------------------------- one run


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and all its descendants (Ray's workers included), and
    the machine's 1-minute load average; attributes each sample to the step that is running, i.e.
    the first step whose metrics line has not appeared yet in ``metrics_path``."""

    def __init__(self, pid: int, metrics_path: Path, interval: float, label: str = ""):
        super().__init__(daemon=True)
        self.pid, self.metrics_path, self.interval, self.label = pid, metrics_path, interval, label
        self.stop_event = threading.Event()
        self.peak_rss: dict[int, int] = {}  # step -> bytes (step 0: start-up before step 1)
        self.step_seen_at: dict[int, float] = {}  # step -> seconds since start when its metrics appeared
        self.load: list[float] = []
        self.load_by_step: dict[int, list[float]] = {}  # step -> 1-minute load averages sampled during it
        self.started = time.monotonic()

    def _tree_rss(self) -> int:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _logged_steps(self) -> int:
        try:
            return sum(1 for line in self.metrics_path.read_text().splitlines() if line.strip())
        except FileNotFoundError:
            return 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            done = self._logged_steps()
            now = time.monotonic() - self.started
            for step in range(1, done + 1):
                if step not in self.step_seen_at and self.label:  # progress, one line per step
                    say(f"{self.label}: step {step} logged, {now:.0f} s since launch, load average {os.getloadavg()[0]:.1f}")
                self.step_seen_at.setdefault(step, now)
            rss = self._tree_rss()
            running = done + 1
            self.peak_rss[running] = max(self.peak_rss.get(running, 0), rss)
            load = os.getloadavg()[0]
            self.load.append(load)
            self.load_by_step.setdefault(running, []).append(load)
            self.stop_event.wait(self.interval)


def worker_threads(s: BenchSettings) -> int:
    return s.threads or os.cpu_count() or 1


def train_arm(
    overrides: list[str], run_dir: Path, timeout_s: float, interval: float, label: str = "", threads: int = 1
) -> tuple[list[dict], TreeSampler, float]:
    from repo_ext.cpu.tiny_run import run_main_ppo

    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    holder: dict[str, TreeSampler] = {}

    def start_sampler(proc: subprocess.Popen) -> None:
        holder["sampler"] = TreeSampler(proc.pid, metrics_path, interval, label)
        holder["sampler"].start()

    try:
        result = run_main_ppo(
            overrides, timeout_s=timeout_s, log_path=run_dir / "train.log",
            # OMP_NUM_THREADS reaches every Ray worker: Ray sets 1 (the actor's num_cpus) only where it is unset
            env={"VERL_FILE_LOGGER_PATH": str(metrics_path), "REPO_EXT_DUMP_DIR": str(run_dir / "dump"),
                 "OMP_NUM_THREADS": str(threads)},
            on_start=start_sampler,
        )
    finally:
        if "sampler" in holder:
            holder["sampler"].stop_event.set()
            holder["sampler"].join()
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return records, holder["sampler"], result.seconds


def prompt_steps_from_repo_dump(dump_dir: Path) -> list[dict]:
    """Per prompt-step records from the RePO trainer's ``REPO_EXT_DUMP_DIR`` (``step_N.pt``: every row
    the actor saw, with its uid, off-policy flag, advantages and token rewards).

    A group (verl uid; replayed rows carry their prompt's uid plus a suffix) has a non-zero advantage
    when any of its rows has a non-zero advantage on some token.
    """
    import torch

    from repo_ext.integration.replay_rows import split_uid

    records = []
    for path in sorted(dump_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1])):
        step = int(path.stem.split("_")[1])
        rows = torch.load(path, weights_only=False)
        groups: dict[str, dict] = {}
        for uid, off, adv, scores in zip(rows["uid"], rows["off_policy"], rows["advantages"], rows["rm_scores"], strict=True):
            group, _ = split_uid(uid)
            g = groups.setdefault(group, {"on": [], "off": [], "rewards": []})
            nonzero = bool(adv.numel()) and float(adv.abs().max()) > 0
            if off:
                g["off"].append(nonzero)
            else:
                g["on"].append(nonzero)
                g["rewards"].append(float(scores.sum()))
        for group, g in groups.items():
            records.append(_prompt_step(step, group, any(g["on"]), any(g["off"]) if g["off"] else None, g["rewards"]))
    return records


def prompt_steps_from_rollout_dump(rollout_dir: Path) -> list[dict]:
    """Per prompt-step records from verl's ``trainer.rollout_data_dir`` (``N.jsonl``, one line per
    on-policy row with its TransferQueue key ``{uid}_{session}_{index}`` and score). GRPO's advantage
    is zero for the whole group exactly when all its rewards are equal."""
    records = []
    for path in sorted(rollout_dir.glob("*.jsonl"), key=lambda p: int(p.stem)):
        groups: dict[str, list[float]] = {}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            groups.setdefault(str(row["uid"]).rsplit("_", 2)[0], []).append(float(row["score"]))
        for group, rewards in groups.items():
            records.append(_prompt_step(int(path.stem), group, len(set(rewards)) > 1, None, rewards))
    return records


def _prompt_step(step: int, group: str, on_nonzero: bool, off_nonzero: bool | None, rewards: list[float]) -> dict:
    return {
        "step": step,
        "group": group,
        "on_nonzero": int(on_nonzero),
        "off_nonzero": None if off_nonzero is None else int(off_nonzero),
        "either_nonzero": int(on_nonzero or bool(off_nonzero)),
        "reward": sum(rewards) / len(rewards) if rewards else None,
    }


def _get(d: dict, key: str) -> float | None:
    value = d.get(key)
    return None if value is None else float(value)


def step_rows(records: list[dict], sampler: TreeSampler) -> list[dict]:
    """One flat dict per step with everything the tables and plots use (seconds, bytes, fractions)."""
    rows = []
    cumulative = 0.0
    for rec in sorted(records, key=lambda r: int(r["step"])):
        step, m = int(rec["step"]), rec["data"]
        step_s = float(m["timing_s/step"])
        # checkpoint saving (last step) and verl's rollout dump (stock_grpo) are inside verl's step
        # timer; neither is training work
        train_s = step_s - float(m.get("timing_s/save_checkpoint", 0.0)) - float(m.get("timing_s/dump_rollout_generations", 0.0))
        cumulative += train_s
        phases = {name: float(m.get(key, 0.0)) for name, key in PHASES.items()}
        rows.append(
            {
                "step": step,
                "reward_mean": _get(m, "critic/score/mean"),
                "nonzero_adv_frac_on": _get(m, "repo/nonzero_adv_group_frac_on"),
                # logged only in steps where some prompt got replayed rows
                "nonzero_adv_frac_off": _get(m, "repo/nonzero_adv_group_frac_off") if m.get("repo/replayed_rows", 0) else None,
                "nonzero_adv_frac_all": _get(m, "repo/nonzero_adv_group_frac_all"),
                "replayed_rows": _get(m, "repo/replayed_rows"),
                "on_policy_rows": _get(m, "repo/on_policy_rows"),
                "step_s": train_s,
                **{f"{name}_s": value for name, value in phases.items()},
                "other_s": train_s - sum(phases.values()),
                "save_checkpoint_s": float(m.get("timing_s/save_checkpoint", 0.0)),
                "cumulative_train_s": cumulative,
                "wall_s_since_launch": sampler.step_seen_at.get(step),
                # on-policy prompt + response tokens (verl's perf/total_num_tokens), and the tokens
                # of the update batch, replayed rows included (global_seqlen/mean x 1 data-parallel rank)
                "tokens_on_policy": _get(m, "perf/total_num_tokens"),
                "tokens_trained": _get(m, "global_seqlen/mean"),
                "response_length_mean": _get(m, "response_length/mean"),
                "store_entries": _get(m, "repo/store_num_entries"),
                "store_nbytes": _get(m, "repo/store_nbytes"),
                # step 1's peak includes verl's start-up (samples before the first metrics line)
                "peak_rss_gib": sampler.peak_rss.get(step, 0) / 2**30 or None,
                "load_avg": _mean(sampler.load_by_step.get(step, [])),
            }
        )
    return rows


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def arm_summary(rows: list[dict], replay_steps: list[int]) -> dict:
    """Means over all steps, over the steps where RePO replays (the same step numbers for every
    arm), and over steps >= 2 (step 1 carries one-off warm-up work)."""

    def over(steps: list[int]) -> dict:
        sel = [r for r in rows if r["step"] in steps]
        return {
            "reward_mean": _mean(r["reward_mean"] for r in sel),
            "nonzero_adv_frac_on": _mean(r["nonzero_adv_frac_on"] for r in sel),
            "nonzero_adv_frac_off": _mean(r["nonzero_adv_frac_off"] for r in sel),
            "nonzero_adv_frac_all": _mean(r["nonzero_adv_frac_all"] for r in sel),
            "step_s": _mean(r["step_s"] for r in sel),
            **{f"{name}_s": _mean(r[f"{name}_s"] for r in sel) for name in PHASES},
            "tokens_trained": _mean(r["tokens_trained"] for r in sel),
            "replayed_rows": _mean(r["replayed_rows"] for r in sel),
        }

    all_steps = [r["step"] for r in rows]
    total_step = sum(r["step_s"] for r in rows)
    return {
        "all_steps": over(all_steps),
        "replay_steps": over(replay_steps),
        "steps_from_2": over([s for s in all_steps if s >= 2]),
        "repo_store_share_of_step_time": sum(r["repo_store_s"] for r in rows) / total_step if total_step else None,
        "train_seconds": total_step,
        "peak_rss_gib": max((r["peak_rss_gib"] or 0.0) for r in rows) if rows else None,
    }


def evaluate_checkpoint(checkpoint: Path, s: BenchSettings, out_json: Path, log_path: Path) -> dict:
    cmd = [
        sys.executable, "-m", "repo_ext.evaluate", "--model", str(checkpoint), "--benchmarks", "arithmetic_test",
        "--limit", str(s.eval_problems), "--max-new-tokens", str(s.eval_max_new_tokens), "--seed", str(s.seed),
        # one thread: on a shared, oversubscribed 2-core machine more threads are slower
        "--threads", "1",
        "--out", str(out_json),
    ]
    start = time.monotonic()
    with open(log_path, "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    result = json.loads(out_json.read_text())["benchmarks"]["arithmetic_test"]
    return {
        "problems": result["problems"],
        "pass@1": result["pass@1"],
        # one sample per problem: pass@1 is the fraction answered right
        "correct": round(result["pass@1"] * result["problems"]),
        "mean_response_tokens": result.get("mean_response_tokens"),
        "truncated_fraction": result.get("truncated_fraction"),
        "seconds": time.monotonic() - start,
    }


# ---------------------------------------------------------------------------------------- ratios


def ratios(arms: dict[str, dict], replay_steps: list[int] | None = None) -> dict[str, dict]:
    """Each RePO arm against GRPO (when GRPO ran): the quantities the paper reports.

    effective_step_ratio: mean fraction of prompts with a non-zero advantage in at least one of
    their groups (RePO: on or replayed; GRPO: on-policy), RePO / GRPO, over the steps where RePO
    replays and over all steps. step_time_ratio: mean training step time (checkpoint save
    excluded), RePO / GRPO, over the same steps. With ``replay_steps`` and per-step rows
    (``arm["steps"]``), both sides are taken over the step numbers both arms ran (the arms may run
    different numbers of steps, and the fractions change as training goes on).
    """
    baseline = baseline_of(arms)
    base = arms.get(baseline)
    out = {}
    for name, arm in arms.items():
        if name == baseline:
            continue
        entry = {"repo_store_share_of_step_time": arm["summary"]["repo_store_share_of_step_time"]}
        # within the RePO run itself: replay's effect with the same rollouts (no cross-run noise)
        rs = arm["summary"]["replay_steps"]
        entry["same_run_all_over_on_replay_steps"] = _ratio(rs["nonzero_adv_frac_all"], rs["nonzero_adv_frac_on"])
        if base is not None:
            arm_sum, base_sum = arm["summary"], base["summary"]
            if replay_steps is not None and "steps" in arm and "steps" in base:
                common = {r["step"] for r in arm["steps"]} & {r["step"] for r in base["steps"]}
                common_replay = [t for t in replay_steps if t in common]
                arm_sum = arm_summary([r for r in arm["steps"] if r["step"] in common], common_replay)
                base_sum = arm_summary([r for r in base["steps"] if r["step"] in common], common_replay)
            for span in ("replay_steps", "all_steps", "steps_from_2"):
                r, g = arm_sum[span], base_sum[span]
                entry[f"effective_step_ratio_{span}"] = _ratio(r["nonzero_adv_frac_all"], g["nonzero_adv_frac_on"])
                entry[f"step_time_ratio_{span}"] = _ratio(r["step_s"], g["step_s"])
            if arm.get("heldout") and base.get("heldout"):
                entry["heldout_pass@1_minus_grpo"] = arm["heldout"]["pass@1"] - base["heldout"]["pass@1"]
        out[name] = entry
    return out


def pooled_replay_effect(arms: dict[str, dict], replay_steps: list[int]) -> dict | None:
    """Replay's effect measured inside the RePO runs, pooled over all RePO arms and replay steps.

    Each RePO step has on-policy groups (what GRPO would have seen with the same rollouts) and
    replayed groups: the ratio of the mean fraction of prompts with a non-zero advantage in either
    to the mean fraction in the on-policy groups alone compares the two on the same samples, so the
    sampling noise between runs does not enter. None when no RePO arm has a replay step.
    """
    on, either = [], []
    for name, arm in arms.items():
        if name in GRPO_ARMS:
            continue
        for row in arm["steps"]:
            if row["step"] in replay_steps and row["nonzero_adv_frac_on"] is not None:
                on.append(row["nonzero_adv_frac_on"])
                either.append(row["nonzero_adv_frac_all"])
    if not on:
        return None
    return {"steps": len(on), "nonzero_adv_frac_on": _mean(on), "nonzero_adv_frac_all": _mean(either),
            "all_over_on": _ratio(_mean(either), _mean(on))}


# ---------------------------------------------------------------------------------------- intervals


def _confidence():
    """benchmarks/confidence.py, also when this script is imported by path (tests)."""
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    import confidence

    return confidence


def fill_step_fractions(rows: list[dict], prompt_steps: list[dict]) -> None:
    """Per-step non-zero-advantage fractions from the prompt-step records where verl logged none (stock GRPO)."""
    for row in rows:
        sel = [r for r in prompt_steps if r["step"] == row["step"]]
        if sel and row.get("nonzero_adv_frac_on") is None:
            row["nonzero_adv_frac_on"] = _mean(r["on_nonzero"] for r in sel)
            row["nonzero_adv_frac_all"] = _mean(r["either_nonzero"] for r in sel)


def _effective(name: str, record: dict) -> int:
    # GRPO's prompts carry a gradient through their on-policy group; RePO's through either group
    return record["on_nonzero"] if name in GRPO_ARMS else record["either_nonzero"]


def estimates(results: dict, resamples: int = 10_000) -> dict:
    """The paper's quantities with 95% intervals (benchmarks/confidence.py), over the replay steps.

    - ``within_run[arm]``: prompt-steps of a RePO arm's replay steps; the fraction with a non-zero
      on-policy group, with a non-zero on-policy or replayed group, and their ratio (pairs resampled
      together: the same rollouts with and without their replayed groups);
    - ``vs_baseline[arm]``: a RePO arm's on-or-replayed fraction against the baseline's on-policy
      fraction, both over the replay steps both runs ran (two runs, resampled independently);
    - ``step_time[arm]``: per step (replay steps both arms ran) arm step time / baseline step time:
      the distribution (median, 2.5th and 97.5th percentile) and the ratio of mean step times with a
      bootstrap interval over steps (pairs resampled together), with each arm's mean load average;
    - ``heldout``: Wilson intervals of each arm's and the base model's held-out accuracy.
    """
    ci = _confidence()
    arms, replay = results["arms"], set(results["replay_steps"])
    baseline = baseline_of(arms)
    out: dict = {"baseline": baseline, "replay_steps": sorted(replay), "within_run": {}, "vs_baseline": {}, "step_time": {}}
    base_records = [r for r in arms[baseline].get("prompt_steps", []) if r["step"] in replay] if baseline else []
    for name, arm in arms.items():
        if name in GRPO_ARMS:
            continue
        records = [r for r in arm.get("prompt_steps", []) if r["step"] in replay]
        if records:
            on = [r["on_nonzero"] for r in records]
            either = [r["either_nonzero"] for r in records]
            out["within_run"][name] = {
                "prompt_steps": len(records),
                "on": ci.bootstrap_interval(on, resamples=resamples),
                "on_or_replayed": ci.bootstrap_interval(either, resamples=resamples),
                "ratio": ci.ratio_of_means_paired(on, either, resamples=resamples),
            }
            # the same step numbers on both sides: the fraction falls as the policy sharpens, so
            # RePO's later steps (which the baseline did not run) must not enter the comparison
            common = {r["step"] for r in records} & {r["step"] for r in base_records}
            arm_same = [r["either_nonzero"] for r in records if r["step"] in common]
            base_same = [r["on_nonzero"] for r in base_records if r["step"] in common]
            if base_same:
                out["vs_baseline"][name] = {
                    "prompt_steps": [len(arm_same), len(base_same)],
                    "steps": [min(common), max(common)],
                    "ratio": ci.ratio_of_means_two_samples(arm_same, base_same, resamples=resamples),
                }
    if baseline:
        base_time = {r["step"]: r for r in arms[baseline]["steps"]}
        for name, arm in arms.items():
            if name == baseline:
                continue
            pairs = [(base_time[r["step"]]["step_s"], r["step_s"]) for r in arm["steps"]
                     if r["step"] in replay and r["step"] in base_time]
            if not pairs:
                continue
            per_step = np.array([a / b for b, a in pairs])
            out["step_time"][name] = {
                "steps": len(pairs),
                "per_step_ratio": {"median": float(np.median(per_step)), "p2.5": float(np.percentile(per_step, 2.5)),
                                   "p97.5": float(np.percentile(per_step, 97.5)), "mean": float(per_step.mean())},
                "ratio_of_means": ci.ratio_of_means_paired([b for b, _ in pairs], [a for _, a in pairs], resamples=resamples),
                "load_avg": {name: arm.get("load_avg_mean"), baseline: arms[baseline].get("load_avg_mean")},
            }
    held = {name: arm["heldout"] for name, arm in arms.items() if arm.get("heldout")}
    if results.get("base_heldout"):
        held["base model"] = results["base_heldout"]
    out["heldout"] = {name: ci.wilson_interval(h["correct"], h["problems"]) for name, h in held.items() if "correct" in h}
    return out


def step_bands(name: str, prompt_steps: list[dict], window: int = 5, resamples: int = 1000) -> dict[str, list]:
    """Per step: mean reward and effective non-zero fraction over the prompt-steps of a centred
    window of ``window`` steps, each with a bootstrap 95% interval over those prompt-steps."""
    ci = _confidence()
    steps = sorted({r["step"] for r in prompt_steps})
    out = {"step": steps, "reward": [], "reward_low": [], "reward_high": [], "nz": [], "nz_low": [], "nz_high": []}
    for t in steps:
        sel = [r for r in prompt_steps if abs(r["step"] - t) <= window // 2]
        for key, values in (("reward", [r["reward"] for r in sel if r["reward"] is not None]),
                            ("nz", [_effective(name, r) for r in sel])):
            band = ci.bootstrap_interval(values, resamples=resamples) if values else {"estimate": None, "low": None, "high": None}
            out[key].append(band["estimate"])
            out[f"{key}_low"].append(band["low"])
            out[f"{key}_high"].append(band["high"])
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# ---------------------------------------------------------------------------------------- reports


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def _heldout_cell(held: dict | None) -> str:
    return "-" if not held else f"{100 * held['pass@1']:.1f}% of {held['problems']}"


def _points(diff: float | None) -> str:
    return "-" if diff is None else f"{100 * diff:+.1f} points"


def _interval(e: dict | None, spec: str = ".3f") -> str:
    if not e or e.get("estimate") is None:
        return "-"
    return f"{format(e['estimate'], spec)} [{_fmt(e['low'], spec)}, {_fmt(e['high'], spec)}]"


def estimates_markdown(est: dict | None) -> list[str]:
    """The estimates of :func:`estimates` as Markdown lines (estimate [95% interval])."""
    if not est:
        return []
    base = est["baseline"] or "-"
    lines = [
        "## Estimates with 95% intervals (over the replay steps)",
        "",
        "Bootstrap (10,000 resamples, percentile interval) over prompt-steps, which it treats as independent; "
        "held-out accuracy: Wilson interval. Paper (Qwen3-1.7B): effective steps x1.48, compute x1.15.",
    ]
    if est["within_run"]:
        lines += ["", "| RePO arm | prompt-steps | non-zero on-policy | non-zero on or replayed | ratio (same run) "
                  f"| ratio vs {base} (prompt-steps) |", "|---|---|---|---|---|---|"]
    for name, w in est["within_run"].items():
        vs = est["vs_baseline"].get(name)
        vs_cell = (
            f"{_interval(vs['ratio'], '.2f')} ({vs['prompt_steps'][0]} vs {vs['prompt_steps'][1]}"
            + (f", steps {vs['steps'][0]}-{vs['steps'][1]})" if "steps" in vs else ")")
        ) if vs else "-"
        lines.append(
            f"| {name} | {w['prompt_steps']} | {_interval(w['on'])} | {_interval(w['on_or_replayed'])} "
            f"| {_interval(w['ratio'], '.2f')} | {vs_cell} |"
        )
    if est["step_time"]:
        lines += ["", f"| step time / {base} | steps | per-step ratio: median [2.5%, 97.5%] | mean of ratios "
                  "| ratio of mean step times [95%] | load average (arm, baseline) |", "|---|---|---|---|---|---|"]
        for name, t in est["step_time"].items():
            q = t["per_step_ratio"]
            load = t["load_avg"]
            lines.append(
                f"| {name} | {t['steps']} | {q['median']:.2f} [{q['p2.5']:.2f}, {q['p97.5']:.2f}] | {q['mean']:.2f} "
                f"| {_interval(t['ratio_of_means'], '.2f')} | {_fmt(load.get(name), '.1f')}, {_fmt(load.get(base), '.1f')} |"
            )
    if est.get("heldout"):
        lines += ["", "| held-out accuracy | correct / problems | 95% Wilson interval |", "|---|---|---|"]
        for name, w in est["heldout"].items():
            lines.append(f"| {name} | {w['successes']} / {w['trials']} | {_interval(w)} |")
    return lines + [""]


def markdown(results: dict) -> str:
    s, arms = results["settings"], results["arms"]
    lines = [
        "# RePO vs GRPO benchmark (generated by benchmarks/bench_repo_vs_grpo.py)",
        "",
        f"Model `{s['model']}`; {s['steps']} steps x {s['prompts_per_step']} prompts x {s['samples']} samples "
        f"(G_off = {s['samples']}), {s['train_prompts']} training prompts, max {s['response_length']} response tokens, "
        f"lr {s['lr']}, seed {s['seed']}. Replay steps: {results['replay_steps']}. "
        f"Machine: {results['machine']['cpus']} CPUs, load average during the arms: "
        + ", ".join(f"{n} {_fmt(a['load_avg_mean'], '.1f')}" for n, a in arms.items())
        + " (timings on a shared machine are noisy).",
        "",
        *estimates_markdown(results.get("estimates")),
        "## Per arm (means; `replay` = the steps in which RePO replays)",
        "",
        "| arm | reward (all) | non-zero adv on (replay) | off (replay) | on or off (replay) | step s (replay) "
        "| gen s | old-log-prob s | update s | store s | store share | tokens trained (replay) | peak RSS GiB "
        "| held-out pass@1 | run s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        a, r = arm["summary"]["all_steps"], arm["summary"]["replay_steps"]
        held = arm.get("heldout")
        lines.append(
            f"| {name} | {_fmt(a['reward_mean'], '.3f')} | {_fmt(r['nonzero_adv_frac_on'])} | {_fmt(r['nonzero_adv_frac_off'])} "
            f"| {_fmt(r['nonzero_adv_frac_all'])} | {_fmt(r['step_s'], '.1f')} | {_fmt(r['gen_s'], '.1f')} "
            f"| {_fmt(r['old_log_prob_s'], '.1f')} | {_fmt(r['update_s'], '.1f')} | {_fmt(r['repo_store_s'], '.3f')} "
            f"| {_fmt(100 * arm['summary']['repo_store_share_of_step_time'], '.2f')}% | {_fmt(r['tokens_trained'], '.0f')} "
            f"| {_fmt(arm['summary']['peak_rss_gib'])} "
            f"| {_heldout_cell(held)} | {_fmt(arm['run_seconds'], '.0f')} |"
        )
    lines += ["", f"## Ratios against GRPO ({PAPER_LINE})", "",
              "| arm | effective-step ratio (replay steps) | (all steps) | same-run on-or-off / on (replay steps) "
              "| step-time ratio (replay steps) | (all steps) | store share | held-out pass@1 minus GRPO |",
              "|---|---|---|---|---|---|---|---|"]
    for name, q in results["ratios"].items():
        diff = q.get("heldout_pass@1_minus_grpo")
        lines.append(
            f"| {name} | {_fmt(q.get('effective_step_ratio_replay_steps'))} | {_fmt(q.get('effective_step_ratio_all_steps'))} "
            f"| {_fmt(q.get('same_run_all_over_on_replay_steps'))} | {_fmt(q.get('step_time_ratio_replay_steps'))} "
            f"| {_fmt(q.get('step_time_ratio_all_steps'))} | {_fmt(100 * q['repo_store_share_of_step_time'], '.2f')}% "
            f"| {_points(diff)} |"
        )
    pooled = results.get("pooled_replay_effect")
    if pooled:
        lines += ["", f"Pooled over the RePO arms' {pooled['steps']} replay steps (same rollouts, no cross-run noise): "
                  f"prompts with a non-zero advantage, on-policy groups {_fmt(pooled['nonzero_adv_frac_on'], '.3f')}, "
                  f"on-policy or replayed {_fmt(pooled['nonzero_adv_frac_all'], '.3f')}, "
                  f"ratio {_fmt(pooled['all_over_on'])} (paper: {PAPER['effective_step_ratio']:.2f})."]
    lines += ["", "## Per step", "",
              "| arm | step | reward | nz on | nz off | nz on-or-off | replayed rows | step s | gen s | old-lp s | update s "
              "| store s | tokens on-policy | tokens trained | peak RSS GiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, arm in arms.items():
        for r in arm["steps"]:
            lines.append(
                f"| {name} | {r['step']} | {_fmt(r['reward_mean'], '.3f')} | {_fmt(r['nonzero_adv_frac_on'])} "
                f"| {_fmt(r['nonzero_adv_frac_off'])} | {_fmt(r['nonzero_adv_frac_all'])} | {_fmt(r['replayed_rows'], '.0f')} "
                f"| {_fmt(r['step_s'], '.1f')} | {_fmt(r['gen_s'], '.1f')} | {_fmt(r['old_log_prob_s'], '.1f')} "
                f"| {_fmt(r['update_s'], '.1f')} | {_fmt(r['repo_store_s'], '.3f')} | {_fmt(r['tokens_on_policy'], '.0f')} "
                f"| {_fmt(r['tokens_trained'], '.0f')} | {_fmt(r['peak_rss_gib'])} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Reward and effective non-zero-advantage fraction, all arms on one figure, against step and
    against cumulative training time. With per-prompt-step data: the line is a centred 5-step
    window's mean and the band its bootstrap 95% interval (:func:`step_bands`); the dots are the
    per-step values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    arms = results["arms"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for index, (name, arm) in enumerate(arms.items()):
        color = f"C{index}"
        rows = arm["steps"]
        steps = [r["step"] for r in rows]
        wall_of = {r["step"]: r["cumulative_train_s"] for r in rows}
        reward = [r["reward_mean"] for r in rows]
        # GRPO's "effective" groups are its on-policy groups; RePO's are on-policy or replayed
        nz = [r["nonzero_adv_frac_on"] if name in GRPO_ARMS else r["nonzero_adv_frac_all"] for r in rows]
        width = 2.5 if name in GRPO_ARMS else 1.5
        bands = step_bands(name, arm["prompt_steps"]) if arm.get("prompt_steps") else None
        for col, values, key in ((0, reward, "reward"), (1, nz, "nz")):
            for row_axes, x in ((axes[0, col], steps), (axes[1, col], [wall_of[t] for t in steps])):
                if bands is None:
                    row_axes.plot(x, values, marker="o", color=color, label=name, linewidth=width)
                    continue
                bx = bands["step"] if row_axes is axes[0, col] else [wall_of.get(t) for t in bands["step"]]
                row_axes.scatter(x, values, color=color, s=10, alpha=0.5)
                row_axes.plot(bx, bands[key], color=color, label=f"{name} (5-step window)", linewidth=width)
                row_axes.fill_between(bx, bands[f"{key}_low"], bands[f"{key}_high"], color=color, alpha=0.2)
    for ax in axes[0]:
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[1]:
        ax.set_xlabel("cumulative training time, s (start-up and checkpoint save excluded)")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean reward (on-policy samples)")
    for ax in axes[:, 1]:
        ax.set_ylabel("prompts with non-zero advantage\n(GRPO: on-policy; RePO: on or replayed)")
    for ax in axes.flat:
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    s = results["settings"]
    fig.suptitle(
        f"RePO vs GRPO, {s['model']}, {s['prompts_per_step']} prompts x {s['samples']} samples/step, CPU "
        f"({results['machine']['cpus']} cores); bands: bootstrap 95% over the window's prompt-steps"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(results: dict, out: Path) -> None:
    results["ratios"] = ratios(results["arms"], results["replay_steps"])
    results["pooled_replay_effect"] = pooled_replay_effect(results["arms"], results["replay_steps"])
    results["estimates"] = estimates(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_repo_vs_grpo.json").write_text(json.dumps(results, indent=2))
    (out / "bench_repo_vs_grpo.md").write_text(markdown(results))
    plot(results, out / "bench_repo_vs_grpo.png")


def print_ratios(results: dict) -> None:
    pooled = results.get("pooled_replay_effect")
    if pooled:
        print(f"\nPooled over RePO arms, replay steps: non-zero-advantage prompts on-policy "
              f"{_fmt(pooled['nonzero_adv_frac_on'], '.3f')} -> on or replayed {_fmt(pooled['nonzero_adv_frac_all'], '.3f')} "
              f"(ratio {_fmt(pooled['all_over_on'])}; paper {PAPER['effective_step_ratio']:.2f})")
    print(f"\nRatios against GRPO ({PAPER_LINE}):")
    for name, q in results["ratios"].items():
        diff = q.get("heldout_pass@1_minus_grpo")
        print(
            f"  {name:15s} effective-step ratio {_fmt(q.get('effective_step_ratio_replay_steps'))} (replay steps), "
            f"{_fmt(q.get('effective_step_ratio_all_steps'))} (all steps); step-time ratio "
            f"{_fmt(q.get('step_time_ratio_replay_steps'))} (replay steps), {_fmt(q.get('step_time_ratio_all_steps'))} (all); "
            f"store share {_fmt(100 * q['repo_store_share_of_step_time'], '.2f')}%; held-out pass@1 vs GRPO "
            f"{_points(diff)}"
        )


# ---------------------------------------------------------------------------------------- main


# ---------------------------------------------------------------------------------------- plan


def replay_steps_of(s: BenchSettings) -> list[int]:
    """Steps in which RePO replays: a prompt is first seen at step i <= steps_per_epoch and
    replayed from its next visit on (gate = one visit of samples)."""
    steps_per_epoch = s.train_prompts // s.prompts_per_step
    return list(range(steps_per_epoch + 1, s.steps + 1))


def calibration_rates(calibration: dict) -> dict:
    """Per-unit times from an earlier run's results: medians over its steps >= 2 (all arms).

    gen: s per on-policy row per response token allowed; old_log_prob: s per on-policy token;
    update: s per trained token; other: s per step; startup: s per run; eval: s per problem per
    new token allowed; plus the run's prompt tokens per row, the mean response length as a fraction
    of the allowed length, and peak RSS.
    """
    cs = calibration["settings"]
    gen, olp, upd, other, startup, evals, prompt_tokens, fill, rss = [], [], [], [], [], [], [], [], []
    for arm in calibration["arms"].values():
        for r in arm["steps"]:
            rows = r.get("on_policy_rows") or cs["prompts_per_step"] * cs["samples"]
            if r["step"] < 2 or not r.get("tokens_on_policy"):
                continue
            gen.append(r["gen_s"] / (rows * cs["response_length"]))
            olp.append(r["old_log_prob_s"] / r["tokens_on_policy"])
            upd.append(r["update_s"] / r["tokens_trained"])
            other.append(r["other_s"])
            prompt_tokens.append(r["tokens_on_policy"] / rows - (r.get("response_length_mean") or 0.0))
            fill.append((r.get("response_length_mean") or cs["response_length"]) / cs["response_length"])
        if arm.get("startup_seconds"):
            startup.append(arm["startup_seconds"])
        if arm.get("heldout"):
            evals.append(arm["heldout"]["seconds"] / (arm["heldout"]["problems"] * cs["eval_max_new_tokens"]))
        rss.append(arm["summary"]["peak_rss_gib"] or 0.0)
    if not gen:
        raise SystemExit("--calibration: the results hold no step >= 2 with token counts; use a run of 2+ steps")
    return {"gen": float(np.median(gen)), "old_log_prob": float(np.median(olp)), "update": float(np.median(upd)),
            "other": float(np.median(other)), "startup": float(np.median(startup)) if startup else 60.0,
            "eval": float(np.median(evals)) if evals else None, "prompt_tokens": float(np.median(prompt_tokens)),
            "response_fill": float(np.median(fill)),
            "peak_rss_gib": max(rss), "load": [a.get("load_avg_mean") for a in calibration["arms"].values()]}


def plan(s: BenchSettings, arms: list[str], rates: dict) -> dict:
    """Expected seconds per arm: on-policy rows x (generation per allowed token + old-log-prob and
    update per token) + per-step overhead, RePO replay steps with twice the update rows (no row
    skipped: an upper bound for the skipping arms), plus start-up and held-out evaluation. Responses
    fill the calibration run's share of the allowed length; generation runs to the full length."""
    on_rows = s.prompts_per_step * s.samples
    row_tokens = rates["prompt_tokens"] + rates["response_fill"] * s.response_length
    replay = set(replay_steps_of(s))
    eval_s = (rates["eval"] or 0.0) * s.eval_problems * s.eval_max_new_tokens
    out = {"arms": {}, "replay_steps": sorted(replay)}
    for arm in arms:
        steps = s.steps_of(arm)
        base = rates["gen"] * on_rows * s.response_length + rates["old_log_prob"] * on_rows * row_tokens + rates["other"]
        update = rates["update"] * on_rows * row_tokens
        replaying = arm not in GRPO_ARMS and ARMS[arm]["strategy"] != "none"
        n_replay = len([t for t in range(1, steps + 1) if t in replay]) if replaying else 0
        seconds = rates["startup"] + steps * (base + update) + n_replay * update + eval_s
        out["arms"][arm] = {
            "steps": steps, "replay_steps": n_replay, "prompt_steps_replay": n_replay * s.prompts_per_step,
            "prompt_steps": steps * s.prompts_per_step, "step_s": base + update,
            "replay_step_s": base + 2 * update if replaying else None, "seconds": seconds,
        }
    if s.eval_base:
        out["base_eval_s"] = eval_s
    out["total_s"] = sum(a["seconds"] for a in out["arms"].values()) + out.get("base_eval_s", 0.0)
    return out


def print_plan(s: BenchSettings, arms: list[str], rates: dict, calibration: Path) -> dict:
    p = plan(s, arms, rates)
    say(f"plan (timings scaled from {calibration}, load average there {rates['load']}; a quiet 2-core machine):")
    for name, a in p["arms"].items():
        replay = f", {a['replay_steps']} replay steps = {a['prompt_steps_replay']} prompt-steps at <= {a['replay_step_s']:.0f} s" if a["replay_step_s"] else ""
        print(f"  {name:16s} {a['steps']} steps x {s.prompts_per_step} prompts x {s.samples} samples "
              f"({a['prompt_steps']} prompt-steps), ~{a['step_s']:.0f} s/step{replay}; with start-up and evaluation "
              f"~{a['seconds'] / 60:.0f} min")
    if "base_eval_s" in p:
        print(f"  base model       held-out evaluation ~{p['base_eval_s'] / 60:.0f} min")
    print(f"  total ~{p['total_s'] / 3600:.1f} h; peak RSS of a run's process tree ~{rates['peak_rss_gib']:.0f} GiB "
          f"(sum of RSS, shared pages counted per process); load average now {os.getloadavg()[0]:.1f}")
    return p


# ---------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        write_results(results, Path(args.out).resolve())
        print(markdown(results).split("## Per step")[0])
        print_ratios(results)
        return results
    arms = parse_arms(args.arms)
    s = settings_from_args(args, arms)
    if args.dry_run:
        calibration = Path(args.calibration)
        return {"plan": print_plan(s, arms, calibration_rates(json.loads(calibration.read_text())), calibration)}
    out, work = Path(args.out).resolve(), Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = {
        "settings": asdict(s),
        "preset": args.preset,
        "arms_requested": arms,
        "replay_steps": replay_steps_of(s),
        "machine": {"cpus": os.cpu_count(), "memory_gib": psutil.virtual_memory().total / 2**30,
                    "python": sys.version.split()[0]},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "arms": {},
    }
    say(f"settings {asdict(s)}; arms {arms}; results -> {out}; scratch -> {work}")
    setup = prepare(s, work)
    say(f"model {setup.model_dir}; train data {setup.train_file}")
    if s.eval_base and not args.skip_eval:
        say(f"base model: held-out evaluation ({s.eval_problems} problems)")
        results["base_heldout"] = evaluate_checkpoint(setup.model_dir, s, work / "base_heldout.json", work / "base_eval.log")
        say(f"base model: held-out pass@1 {100 * results['base_heldout']['pass@1']:.1f}%")
    for arm in arms:
        run_dir = work / arm
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        steps = s.steps_of(arm)
        overrides = arm_overrides(s, setup, arm, run_dir, save=not args.skip_eval)
        load_before = os.getloadavg()
        say(f"arm {arm}: training ({steps} steps); verl log {run_dir / 'train.log'}")
        records, sampler, seconds = train_arm(overrides, run_dir, args.run_timeout, args.rss_interval, label=f"arm {arm}", threads=worker_threads(s))
        rows = step_rows(records, sampler)
        if len(rows) != steps:
            raise SystemExit(f"arm {arm}: verl logged {len(rows)} steps, expected {steps}; see {run_dir / 'train.log'}")
        if arm == STOCK_GRPO:
            prompt_steps = prompt_steps_from_rollout_dump(run_dir / "rollouts")
        else:
            prompt_steps = prompt_steps_from_repo_dump(run_dir / "dump")
        fill_step_fractions(rows, prompt_steps)
        entry = {
            "overrides": overrides,
            "run_seconds": seconds,
            "startup_seconds": sampler.step_seen_at.get(1, seconds) - rows[0]["step_s"] if rows else None,
            "load_avg_before": load_before[0],
            "load_avg_mean": _mean(sampler.load),
            "steps": rows,
            "summary": arm_summary(rows, results["replay_steps"]),
            "prompt_steps": prompt_steps,
        }
        say(
            f"arm {arm}: {seconds:.0f} s; reward {_fmt(entry['summary']['all_steps']['reward_mean'], '.3f')}; "
            f"non-zero adv (replay steps) on {_fmt(entry['summary']['replay_steps']['nonzero_adv_frac_on'])} "
            f"all {_fmt(entry['summary']['replay_steps']['nonzero_adv_frac_all'])}; "
            f"step {_fmt(entry['summary']['replay_steps']['step_s'], '.1f')} s; peak RSS {_fmt(entry['summary']['peak_rss_gib'])} GiB"
        )
        if not args.skip_eval:
            checkpoint = run_dir / "checkpoints" / f"global_step_{steps}"
            say(f"arm {arm}: held-out evaluation of {checkpoint} ({s.eval_problems} problems)")
            entry["heldout"] = evaluate_checkpoint(checkpoint, s, run_dir / "heldout.json", run_dir / "eval.log")
            say(f"arm {arm}: held-out pass@1 {100 * entry['heldout']['pass@1']:.1f}% ({entry['heldout']['seconds']:.0f} s)")
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # ~1.6 GB each with SmolLM2
        results["arms"][arm] = entry
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_results(results, out)  # after every arm: a stopped benchmark keeps what it finished
        say(f"arm {arm} done; results so far in {out}")
    print()
    print(markdown(results).split("## Per step")[0])
    print_ratios(results)
    return results


if __name__ == "__main__":
    main()
