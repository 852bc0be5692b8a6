"""Re-derive, from the committed files of run 5 (``benchmarks/results/paper_question/``), every number
that docs/benchmarks.md and the README quote about it (issue 24): pure numpy, no verl.

    .venv/bin/python benchmarks/recheck_paper_question.py            # prints the numbers

Resampling: the step-time interval is a moving-block bootstrap (blocks of 6 consecutive paired steps,
an epoch here, since neighbouring steps share machine load and policy), which the run's own
interval (steps resampled independently) is not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

RUN = Path(__file__).resolve().parent / "results" / "paper_question"
COMMON = range(7, 26)  # the replay steps both arms ran


def block_bootstrap_ratio(base: np.ndarray, arm: np.ndarray, block: int, resamples: int = 10_000, seed: int = 0) -> tuple:
    """mean(arm) / mean(base) over paired steps; moving blocks of ``block`` consecutive steps, drawn
    with replacement until ``len(base)`` steps are filled (the last block cut), percentile 95% interval."""
    n = len(base)
    rng = np.random.default_rng(seed)
    starts = np.arange(n - block + 1)
    draws = []
    for _ in range(resamples):
        idx = np.concatenate([np.arange(s, s + block) for s in rng.choice(starts, size=-(-n // block))])[:n]
        draws.append(arm[idx].mean() / base[idx].mean())
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(arm.mean() / base.mean()), float(low), float(high)


def main() -> dict:
    d = json.loads((RUN / "bench_repo_vs_grpo.json").read_text())
    repo, grpo = d["arms"]["recent_k_skip"], d["arms"]["stock_grpo"]
    out: dict = {}
    # (1) what the run printed before the analysis changed (commit 37e2bcb) and what the JSON now holds
    log = (RUN / "bench_log.txt").read_text()
    out["printed_vs_baseline"] = re.search(r"\| recent_k_skip \| 200 \|.*\| ([\d.]+ \[[\d.]+, [\d.]+\]) \((\d+) vs (\d+)\) \|", log).groups()
    vb = d["estimates"]["vs_baseline"]["recent_k_skip"]
    out["json_vs_baseline"] = (vb["ratio"]["estimate"], vb["ratio"]["low"], vb["ratio"]["high"], vb["prompt_steps"], vb["steps"])
    # (2) on-policy counts of the two arms over steps 7-25: equal in total and per step?
    ps = lambda arm, s: [r for r in arm["prompt_steps"] if r["step"] == s]
    on_r = {s: sum(r["on_nonzero"] for r in ps(repo, s)) for s in COMMON}
    on_g = {s: sum(r["on_nonzero"] for r in ps(grpo, s)) for s in COMMON}
    out["on_policy_counts_7_25"] = (sum(on_r.values()), sum(on_g.values()), 4 * len(COMMON))
    out["steps_equal_on_counts"] = sum(on_r[s] == on_g[s] for s in COMMON)
    # (3) per epoch (6 steps): informative on-policy count, and informative replayed count of the next epoch
    epochs = [range(1 + 6 * e, 7 + 6 * e) for e in range(10)]
    count = lambda arm, steps, key: sum(r[key] or 0 for r in arm["prompt_steps"] if r["step"] in steps)
    out["per_epoch_on"] = [count(repo, e, "on_nonzero") for e in epochs]
    out["per_epoch_off"] = [count(repo, e, "off_nonzero") for e in epochs]
    replay = [r for r in repo["prompt_steps"] if r["step"] >= 7]
    out["within_run_on_frac"] = np.mean([r["on_nonzero"] for r in replay])
    out["within_run_all_frac"] = np.mean([r["either_nonzero"] for r in replay])
    # (4) step time, steps 7-25
    rt = {r["step"]: r for r in repo["steps"]}
    gt = {r["step"]: r for r in grpo["steps"]}
    base = np.array([gt[s]["step_s"] for s in COMMON])
    arm = np.array([rt[s]["step_s"] for s in COMMON])
    out["step_time_ratio_of_means"] = arm.mean() / base.mean()
    skipped = [s for s in COMMON if rt[s]["nonzero_adv_frac_all"] == 0]
    out["repo_whole_update_skipped"] = skipped
    keep = np.array([s not in skipped for s in COMMON])
    out["step_time_ratio_other_steps"] = (arm[keep].mean() / base[keep].mean(), int(keep.sum()))
    out["grpo_steps_all_zero_adv"] = [s for s in COMMON if gt[s]["nonzero_adv_frac_on"] == 0]
    out["block6_bootstrap"] = block_bootstrap_ratio(base, arm, 6)
    out["iid_bootstrap"] = block_bootstrap_ratio(base, arm, 1)
    out["update_s_mean"] = (np.mean([rt[s]["update_s"] for s in COMMON]), np.mean([gt[s]["update_s"] for s in COMMON]))
    out["tokens_trained_mean_7_25"] = (np.mean([rt[s]["tokens_trained"] for s in COMMON]), np.mean([gt[s]["tokens_trained"] for s in COMMON]))
    out["tokens_trained_summary"] = (repo["summary"]["replay_steps"]["tokens_trained"], grpo["summary"]["replay_steps"]["tokens_trained"])
    out["store_share"] = repo["summary"]["repo_store_share_of_step_time"]
    # (6) held-out evaluation and training reward
    out["heldout"] = {k: (v["correct"], v["problems"], v.get("truncated_fraction"), v.get("mean_response_tokens"))
                      for k, v in [("recent_k_skip", repo["heldout"]), ("stock_grpo", grpo["heldout"]), ("base", d["base_heldout"])]}
    out["low_reward_steps_from_8"] = [(s, round(r["reward_mean"], 3)) for s, r in rt.items() if s >= 8 and r["reward_mean"] < 0.75]
    return out


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key}: {value}")
