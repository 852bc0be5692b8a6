"""RePO against GRPO side by side on this machine: ``make bench`` (issues 7, 14, 15, 24).

The entry point; the work is done by the modules of ``benchmarks/benchlib/`` (one job each):
``settings`` (arms, presets, command line), ``runs`` (one arm's verl run and its evaluations),
``records`` (per prompt-step / step / arm records and point ratios), ``estimates`` (intervals, with
``benchmarks/confidence.py``), ``reports`` (Markdown, JSON, console), ``plots`` (PNG) and ``plan``
(``--dry-run``).

Every arm is one run of verl's stock entry point with the same model, data, seeds and on-policy
sample budget (prompts per step x samples per prompt); the arms differ only in ``algorithm.repo.*``,
except ``stock_grpo``:

- ``stock_grpo``: verl's own GRPO (``--config-name=repo_trainer algorithm=grpo``: verl's sync V1
  trainer, ``adv_estimator=grpo``, the stock loss, no plugin trainer) with the same settings. When it
  runs, every ratio is taken against it. Its per-prompt data come from verl's rollout dump
  (``trainer.rollout_data_dir``);
- ``recent_k_skip`` / ``recent_k_noskip``: RePO ``recent_k`` with
  ``algorithm.repo.skip_zero_advantage_rows=true`` / ``false`` (issue 14);
- ``grpo_skip``: ``strategy=none`` with ``skip_zero_advantage_rows=true``: GRPO with exactly RePO's
  zero-advantage skipping, so ``recent_k_skip`` / ``grpo_skip`` is what replay itself costs (issue 24);

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

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import psutil

# benchmarks/ on the path: the benchlib package and confidence.py, also when imported by path (tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.estimates import estimates, step_bands, whole_update_skipped_steps  # noqa: E402
from benchlib.plan import calibration_rates, plan, print_plan, replay_steps_of  # noqa: E402
from benchlib.plots import plot  # noqa: E402
from benchlib.records import (  # noqa: E402
    _mean,
    arm_summary,
    fill_step_fractions,
    pooled_replay_effect,
    prompt_steps_from_repo_dump,
    prompt_steps_from_rollout_dump,
    ratios,
    step_rows,
)
from benchlib.reports import _fmt, estimates_markdown, markdown, print_ratios, write_results  # noqa: E402
from benchlib.runs import (  # noqa: E402
    MergedSampler,
    Setup,
    TreeSampler,
    arm_overrides,
    eval_steps_of,
    evaluate_checkpoint,
    prepare,
    segments_of,
    train_arm,
    worker_threads,
)
from benchlib.settings import (  # noqa: E402
    ARMS,
    GRPO_ARMS,
    PRESETS,
    STOCK_GRPO,
    BenchSettings,
    baseline_of,
    parse_arm_steps,
    parse_args,
    parse_arms,
    say,
    settings_from_args,
)

__all__ = [
    "ARMS", "GRPO_ARMS", "PRESETS", "STOCK_GRPO", "BenchSettings", "Setup", "TreeSampler", "arm_overrides", "arm_summary",
    "baseline_of", "calibration_rates", "estimates", "estimates_markdown", "evaluate_checkpoint", "main", "markdown",
    "parse_arm_steps", "parse_args", "parse_arms", "plan", "plot", "pooled_replay_effect", "prompt_steps_from_repo_dump",
    "prompt_steps_from_rollout_dump", "ratios", "settings_from_args", "step_bands", "whole_update_skipped_steps",
    "eval_steps_of", "segments_of",
]


def finish_arm(arm: str, s: BenchSettings, args, run_dir: Path, p: dict, replay_steps: list[int]) -> dict:
    """An arm's results entry once its last step ran: per-step rows over all its segments, prompt-step
    records, summary, and the held-out evaluations of its checkpoints (then deleted)."""
    steps = s.steps_of(arm)
    sampler = MergedSampler(p["samplers"])
    rows = step_rows(p["records"], sampler)
    if len(rows) != steps:
        raise SystemExit(f"arm {arm}: verl logged {len(rows)} steps, expected {steps}; see {run_dir}")
    if arm == STOCK_GRPO:
        prompt_steps = prompt_steps_from_rollout_dump(run_dir / "rollouts")
    else:
        prompt_steps = prompt_steps_from_repo_dump(run_dir / "dump")
    fill_step_fractions(rows, prompt_steps)
    entry = {
        "overrides": p["overrides"],
        "run_seconds": p["seconds"],
        "startup_seconds": p["startup"],
        "segments": len(p["samplers"]),
        "load_avg_before": p["load_before"],
        "load_avg_mean": _mean(sampler.load),
        "steps": rows,
        "summary": arm_summary(rows, replay_steps),
        "prompt_steps": prompt_steps,
    }
    say(
        f"arm {arm}: {p['seconds']:.0f} s; reward {_fmt(entry['summary']['all_steps']['reward_mean'], '.3f')}; "
        f"non-zero adv (replay steps) on {_fmt(entry['summary']['replay_steps']['nonzero_adv_frac_on'])} "
        f"all {_fmt(entry['summary']['replay_steps']['nonzero_adv_frac_all'])}; "
        f"step {_fmt(entry['summary']['replay_steps']['step_s'], '.1f')} s; peak RSS {_fmt(entry['summary']['peak_rss_gib'])} GiB"
    )
    if not args.skip_eval:
        entry["evaluations"] = {}
        cumulative = {r["step"]: r["cumulative_train_s"] for r in rows}
        for step in eval_steps_of(s, arm):
            checkpoint = run_dir / "checkpoints" / f"global_step_{step}"
            say(f"arm {arm}: held-out evaluation of {checkpoint} ({s.eval_problems} problems)")
            try:
                held = evaluate_checkpoint(checkpoint, s, run_dir / f"heldout_step{step}.json", run_dir / f"eval_step{step}.log")
            except (subprocess.SubprocessError, OSError, KeyError, ValueError) as error:
                # keep the arm's training records: a failed evaluation is reported, not fatal
                say(f"arm {arm}: step {step} evaluation FAILED ({error!r}); see {run_dir / f'eval_step{step}.log'}")
                entry["evaluations"][str(step)] = {"error": repr(error)}
                continue
            held["cumulative_train_s"] = cumulative.get(step)
            entry["evaluations"][str(step)] = held
            say(f"arm {arm}: step {step} held-out pass@1 {100 * held['pass@1']:.1f}% ({held['seconds']:.0f} s)")
        if "pass@1" in entry["evaluations"].get(str(steps), {}):
            entry["heldout"] = entry["evaluations"][str(steps)]
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # ~1.6 GB each with SmolLM2
    return entry


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
    # with --alternate-every, block by block (each block resumes every arm from its checkpoint)
    partial = {arm: {"records": [], "samplers": [], "seconds": 0.0, "startup": 0.0} for arm in arms}
    for arm, first, last in segments_of(s, arms):
        run_dir = work / arm
        if first == 1:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
        steps = s.steps_of(arm)
        overrides = arm_overrides(s, setup, arm, run_dir, save=not args.skip_eval, until_step=last if s.alternate_every else None)
        p = partial[arm]
        p.setdefault("overrides", overrides)
        p.setdefault("load_before", os.getloadavg()[0])
        say(f"arm {arm}: training steps {first}-{last} of {steps}; verl log {run_dir}/train*.log")
        records, sampler, seconds = train_arm(
            overrides, run_dir, args.run_timeout, args.rss_interval, label=f"arm {arm}", threads=worker_threads(s), first_step=first
        )
        segment_rows = step_rows(records, sampler)
        if [r["step"] for r in segment_rows] != list(range(first, last + 1)):
            raise SystemExit(f"arm {arm}: verl logged steps {[r['step'] for r in segment_rows]}, expected {first}-{last}; see {run_dir}")
        p["records"] += records
        p["samplers"].append(sampler)
        p["seconds"] += seconds
        # launch to the first step's metrics, minus that step's own time: start-up (and resume)
        p["startup"] += sampler.step_seen_at.get(first, seconds) - segment_rows[0]["step_s"]
        if last == steps:
            results["arms"][arm] = finish_arm(arm, s, args, run_dir, p, results["replay_steps"])
            results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            write_results(results, out)  # after every arm: a stopped benchmark keeps what it finished
            say(f"arm {arm} done; results so far in {out}")
    print()
    print(markdown(results).split("## Per step")[0])
    print_ratios(results)
    return results


if __name__ == "__main__":
    main()
