"""Running one arm: its training data and overrides, verl's ``main_ppo`` with an RSS/load sampler,
and the held-out evaluation of its checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchlib.settings import ARMS, STOCK_GRPO, BenchSettings, say

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


def arm_overrides(
    s: BenchSettings, setup: Setup, arm: str, out: Path, save: bool, until_step: int | None = None
) -> list[str]:
    """``main_ppo`` overrides of one arm. RePO arms differ only in ``algorithm.repo.*``;
    ``stock_grpo`` is ``algorithm=grpo`` (verl's trainer and loss) with everything else the same.

    G_off = G_on = samples and min_cache_to_replay = samples: a prompt's first visit fills its
    buffer, replay starts on its second visit (the paper: 16 = two visits of 8, so the third).
    Rollout dumps for the per-prompt-step data: ``trainer.rollout_data_dir`` (stock GRPO) here, the
    RePO trainer's ``REPO_EXT_DUMP_DIR`` in :func:`train_arm`.
    """
    rows = s.prompts_per_step * s.samples
    steps = s.steps_of(arm)
    # --alternate-every K: the arm runs in segments of K steps, each resuming from the previous
    # segment's checkpoint (verl's resume_mode=auto; the RePO store is saved with it)
    segment = s.alternate_every > 0
    save_freq = s.alternate_every if segment else ((s.eval_every or steps) if save else -1)
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
        # verl also saves the last step; eval_every > 0 keeps every N-th step's checkpoint for the accuracy curve
        f"trainer.save_freq={save_freq}",
        f"trainer.total_training_steps={until_step or steps}",
        "trainer.total_epochs=1000",
        f"trainer.resume_mode={'auto' if segment else 'disable'}",
        # segments keep the last two checkpoints (1.6 GB each with SmolLM2): enough to resume
        # (all of them when intermediate checkpoints are to be evaluated)
        *(["trainer.max_actor_ckpt_to_keep=2"] if segment and not (save and s.eval_every) else []),
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

    def __init__(self, pid: int, metrics_path: Path, interval: float, label: str = "", first_step: int = 1):
        super().__init__(daemon=True)
        self.first_step = first_step  # a resumed segment's metrics file starts at this step
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
            for step in range(self.first_step, self.first_step + done):
                if step not in self.step_seen_at and self.label:  # progress, one line per step
                    say(f"{self.label}: step {step} logged, {now:.0f} s since launch, load average {os.getloadavg()[0]:.1f}")
                self.step_seen_at.setdefault(step, now)
            rss = self._tree_rss()
            running = self.first_step + done
            self.peak_rss[running] = max(self.peak_rss.get(running, 0), rss)
            load = os.getloadavg()[0]
            self.load.append(load)
            self.load_by_step.setdefault(running, []).append(load)
            self.stop_event.wait(self.interval)


def worker_threads(s: BenchSettings) -> int:
    return s.threads or os.cpu_count() or 1


def train_arm(
    overrides: list[str], run_dir: Path, timeout_s: float, interval: float, label: str = "", threads: int = 1,
    first_step: int = 1,
) -> tuple[list[dict], TreeSampler, float]:
    """One ``main_ppo`` run of an arm (or one segment, starting at ``first_step``): verl's per-step
    metrics records, the sampler (RSS, load per step) and the run's wall seconds. A segment gets its
    own metrics file and log (verl's file logger truncates its file on start)."""
    from repo_ext.cpu.tiny_run import run_main_ppo

    suffix = "" if first_step == 1 else f"_from{first_step}"
    metrics_path = run_dir / f"metrics{suffix}.jsonl"
    metrics_path.unlink(missing_ok=True)
    holder: dict[str, TreeSampler] = {}

    def start_sampler(proc: subprocess.Popen) -> None:
        holder["sampler"] = TreeSampler(proc.pid, metrics_path, interval, label, first_step=first_step)
        holder["sampler"].start()

    try:
        result = run_main_ppo(
            overrides, timeout_s=timeout_s, log_path=run_dir / f"train{suffix}.log",
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


def eval_steps_of(s: BenchSettings, arm: str) -> list[int]:
    """Steps whose checkpoint is evaluated: every ``eval_every``-th and the last."""
    steps = s.steps_of(arm)
    every = list(range(s.eval_every, steps + 1, s.eval_every)) if s.eval_every else []
    return sorted({*every, steps})


def evaluate_checkpoint(checkpoint: Path, s: BenchSettings, out_json: Path, log_path: Path) -> dict:
    """Held-out accuracy of one checkpoint (or model folder) on ``s.eval_problems`` arithmetic_test
    problems (subset seed 0: the same problems in every run), one sample each at
    ``s.eval_temperature`` (0 = greedy).

    Returns the summary plus ``per_problem``: [problems] dicts ``{index, correct (0/1), tokens,
    truncated (0/1)}`` in the subset's order, so two evaluations can be compared problem by problem.
    """
    cmd = [
        sys.executable, "-m", "repo_ext.evaluation", "--model", str(checkpoint), "--benchmarks", "arithmetic_test",
        "--limit", str(s.eval_problems), "--max-new-tokens", str(s.eval_max_new_tokens), "--seed", str(s.seed),
        "--temperature", str(s.eval_temperature), "--subset-seed", "0", "--save-responses",
        # one thread: on a shared, oversubscribed 2-core machine more threads are slower
        "--threads", "1",
        "--out", str(out_json),
    ]
    start = time.monotonic()
    with open(log_path, "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    data = json.loads(out_json.read_text())
    result = data["benchmarks"]["arithmetic_test"]
    per_problem = [
        {"index": p["index"], "correct": int(p["samples"][0]["score"] >= 1.0), "tokens": p["samples"][0]["num_tokens"],
         "truncated": int(bool(p["samples"][0]["truncated"]))}
        for p in data["responses"]["arithmetic_test"]
    ]
    return {
        "problems": result["problems"],
        "pass@1": result["pass@1"],
        "correct": sum(p["correct"] for p in per_problem),
        "mean_response_tokens": result.get("mean_response_tokens"),
        "truncated_fraction": result.get("truncated_fraction"),
        "temperature": s.eval_temperature,
        "seconds": time.monotonic() - start,
        "per_problem": per_problem,
    }


class MergedSampler:
    """The samplers of an arm's segments as one (same attributes as :class:`TreeSampler`; a step's
    ``step_seen_at`` is relative to its own segment's launch)."""

    def __init__(self, samplers: list[TreeSampler]):
        self.peak_rss: dict[int, int] = {}
        self.step_seen_at: dict[int, float] = {}
        self.load: list[float] = []
        self.load_by_step: dict[int, list[float]] = {}
        for sampler in samplers:
            for step, rss in sampler.peak_rss.items():
                self.peak_rss[step] = max(self.peak_rss.get(step, 0), rss)
            for step, seen in sampler.step_seen_at.items():
                self.step_seen_at.setdefault(step, seen)
            self.load += sampler.load
            for step, loads in sampler.load_by_step.items():
                self.load_by_step.setdefault(step, []).extend(loads)


def segments_of(s: BenchSettings, arms: list[str]) -> list[tuple[str, int, int]]:
    """(arm, first step, last step) in run order: with ``alternate_every`` K, block by block (steps
    1-K of every arm, then K+1-2K, ...), the arms' order rotating by one each block so that no arm
    always runs first after another arm's start-up; without it, each arm whole, in ``arms`` order."""
    if not s.alternate_every:
        return [(arm, 1, s.steps_of(arm)) for arm in arms]
    out = []
    longest = max(s.steps_of(arm) for arm in arms)
    for block, first in enumerate(range(1, longest + 1, s.alternate_every)):
        order = arms[block % len(arms):] + arms[:block % len(arms)]
        for arm in order:
            if first <= s.steps_of(arm):
                out.append((arm, first, min(first + s.alternate_every - 1, s.steps_of(arm))))
    return out
