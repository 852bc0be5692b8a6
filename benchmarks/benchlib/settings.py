"""What a benchmark run is: its arms, settings, presets and command line.

The arms differ only in ``algorithm.repo.*`` (``ARMS``), except ``stock_grpo`` (verl's own trainer).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: run 2 of docs/benchmarks.md (quiet machine, load average 1.3-1.5): the default timing basis of --dry-run
DEFAULT_CALIBRATION = REPO_ROOT / "benchmarks" / "results" / "grpo_vs_recent_k_4x4" / "bench_repo_vs_grpo.json"

#: arm name -> algorithm.repo settings that differ between arms
ARMS: dict[str, dict[str, str]] = {
    "grpo": {"strategy": "none", "advantage_mode": "split"},
    "stock_grpo": {},  # verl's own trainer: no algorithm.repo settings
    "recent_k": {"strategy": "recent_k", "advantage_mode": "split"},
    "recent_k_skip": {"strategy": "recent_k", "advantage_mode": "split", "skip_zero_advantage_rows": "true"},
    "recent_k_noskip": {"strategy": "recent_k", "advantage_mode": "split", "skip_zero_advantage_rows": "false"},
    # GRPO with exactly RePO's zero-advantage skipping: RePO+skip / this = what replay itself costs (issue 24)
    "grpo_skip": {"strategy": "none", "advantage_mode": "split", "skip_zero_advantage_rows": "true"},
    "highest_k": {"strategy": "highest_k", "advantage_mode": "split"},
    "max_variance_k": {"strategy": "max_variance_k", "advantage_mode": "split"},
    "random_k": {"strategy": "random_k", "advantage_mode": "split"},
    "mixed_recent_k": {"strategy": "recent_k", "advantage_mode": "mixed"},
}
STOCK_GRPO = "stock_grpo"
#: arms without replay (their prompts carry a gradient only through the on-policy group)
GRPO_ARMS = ("grpo", "grpo_skip", STOCK_GRPO)


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
    f"store share target < {100 * PAPER['store_share_target']:.0f}%. Like for like only where the on-policy "
    "informative fraction is near the paper's 31% and the arms' skipping matches (the paper has none)"
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
    #: evaluate the checkpoints of steps eval_every, 2 eval_every, ... (and the last); 0: the last only
    eval_every: int = 0
    #: held-out evaluation temperature; 0 = greedy (the same answers every time for the same weights)
    eval_temperature: float = 0.2
    #: run the arms alternately in blocks of this many steps (each block resumes from a checkpoint); 0: one after the other
    alternate_every: int = 0

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
    # issue 24, the pre-registered time-to-accuracy study (docs/benchmarks.md): one seed pair of stock
    # GRPO and RePO+skip from the same weights and data order, in the regime of `make demo` (2-3-term
    # sums, temperature 0.7, G = 4, 64 tokens), where stock GRPO's on-policy groups were informative
    # 37.5% of the time in the replay phase. 64 prompts, 8 per step: an epoch is 8 steps, every prompt
    # is visited 3 times in 24 steps, replay from step 9. Greedy held-out evaluation of 256 problems
    # (the same every time) at steps 0 (base), 8, 16, 24. --seed picks the pair (pool, order, sampling).
    "time-to-accuracy": dict(
        arms="stock_grpo,recent_k_skip", model="smollm2", steps=24, train_prompts=64, train_source="arithmetic",
        prompts_per_step=8, samples=4, response_length=64, temperature=0.7, eval_problems=256, eval_max_new_tokens=64,
        eval_base=True, eval_every=8, eval_temperature=0.0, lr=2e-6, seed=1,
        out=str(REPO_ROOT / "benchmarks" / "results" / "time_to_accuracy" / "seed_1"), work_dir="/tmp/bench_tta",
        run_timeout=6 * 3600.0,
    ),
    # issue 24: what replay costs per step. GRPO with RePO's exact skipping, RePO+skip and stock GRPO in
    # the same regime; 32 prompts (an epoch is 4 steps: replay in steps 5-24, 20 paired steps, blocks of 4),
    # the arms alternating in blocks of 4 steps (each block resumes from the arm's checkpoint)
    "step-cost": dict(
        arms="grpo_skip,recent_k_skip,stock_grpo", model="smollm2", steps=24, train_prompts=32, train_source="arithmetic",
        prompts_per_step=8, samples=4, response_length=64, temperature=0.7, skip_eval=True, lr=2e-6, seed=0, alternate_every=4,
        out=str(REPO_ROOT / "benchmarks" / "results" / "step_cost"), work_dir="/tmp/bench_step_cost",
        run_timeout=6 * 3600.0,
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
    parser.add_argument(
        "--eval-every", type=int, default=0,
        help="also evaluate the checkpoints of every N-th step (held-out accuracy curve); 0: the final checkpoint only",
    )
    parser.add_argument("--eval-temperature", type=float, default=0.2, help="held-out evaluation temperature; 0 = greedy")
    parser.add_argument(
        "--alternate-every", type=int, default=0,
        help="run the arms alternately in blocks of N steps (each block resumes from the arm's checkpoint), so that "
        "machine load drifts hit every arm alike; 0: one arm after the other",
    )
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
    if args.alternate_every < 0 or (args.alternate_every and args.eval_every and args.eval_every % args.alternate_every):
        raise SystemExit(
            f"--alternate-every={args.alternate_every} must be >= 0, and --eval-every={args.eval_every} a multiple of it "
            "(checkpoints are saved at block ends)"
        )
    if args.eval_every < 0 or args.eval_temperature < 0:
        raise SystemExit(
            f"--eval-every={args.eval_every} and --eval-temperature={args.eval_temperature} must be >= 0 "
            "(0: final checkpoint only / greedy)"
        )
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
        eval_every=args.eval_every, eval_temperature=args.eval_temperature, alternate_every=args.alternate_every,
        micro_batch_size=args.micro_batch_size, train_source=args.train_source, threads=args.threads,
    )


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
