"""``--dry-run``: the steps in which RePO replays, and the expected duration of a run scaled from an
earlier run's per-token times."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from benchlib.settings import ARMS, GRPO_ARMS, BenchSettings, say

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
        # every eval_every-th checkpoint and the last are evaluated
        evaluations = len({*range(s.eval_every, steps + 1, s.eval_every), steps}) if s.eval_every else 1
        base = rates["gen"] * on_rows * s.response_length + rates["old_log_prob"] * on_rows * row_tokens + rates["other"]
        update = rates["update"] * on_rows * row_tokens
        replaying = arm not in GRPO_ARMS and ARMS[arm]["strategy"] != "none"
        n_replay = len([t for t in range(1, steps + 1) if t in replay]) if replaying else 0
        # --alternate-every: every block of an arm is a run of its own, with its own start-up
        runs = -(-steps // s.alternate_every) if s.alternate_every else 1
        seconds = rates["startup"] * runs + steps * (base + update) + n_replay * update + evaluations * eval_s
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
