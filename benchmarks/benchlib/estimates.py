"""The benchmark's quantities with 95% intervals, over the replay steps (statistics in
``benchmarks/confidence.py``; resampling units chosen for issue 24):

- fractions of prompts with a non-zero advantage and their ratios: **prompt-cluster bootstrap** (all
  visits of a prompt resampled together: a prompt comes back every epoch);
- step-time ratios: **moving-block bootstrap** over paired steps (blocks of one epoch's steps:
  neighbouring steps share machine load and policy);
- held-out accuracy: Wilson intervals, and between arms evaluated on the same problems the exact
  **McNemar** test and a paired bootstrap of the difference, with answer-length statistics;
- accuracy curves (``--eval-every``): area under the curve per arm (``confidence.auc``).
"""

from __future__ import annotations

import numpy as np

import confidence as ci
from benchlib.records import _mean
from benchlib.settings import ARMS, GRPO_ARMS, STOCK_GRPO, baseline_of


def _effective(name: str, record: dict) -> int:
    # GRPO's prompts carry a gradient through their on-policy group; RePO's through either group
    return record["on_nonzero"] if name in GRPO_ARMS else record["either_nonzero"]


def skips_whole_update(arm: str) -> bool:
    """Arms whose zero-advantage skipping drops the whole update in a step without any signal."""
    return ARMS.get(arm, {}).get("skip_zero_advantage_rows") == "true"


def whole_update_skipped_steps(name: str, rows: list[dict], steps: set[int] | None = None) -> list[int]:
    """Steps in which a skipping arm had no prompt with a non-zero advantage (nothing to train on)."""
    if not skips_whole_update(name):
        return []
    key = "nonzero_adv_frac_on" if name in GRPO_ARMS else "nonzero_adv_frac_all"
    return [r["step"] for r in rows if (steps is None or r["step"] in steps) and r.get(key) == 0]


def _cluster_fraction(records: list[dict], key: str, resamples: int) -> dict:
    return ci.cluster_bootstrap([r[key] for r in records], [r["prompt"] for r in records], resamples=resamples)


def _ratio_draws(a_draws: np.ndarray, b_draws: np.ndarray) -> tuple[float, float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = a_draws / b_draws
    ratio = ratio[np.isfinite(ratio)]
    if not ratio.size:
        return (float("nan"), float("nan"))
    low, high = np.percentile(ratio, [2.5, 97.5])
    return float(low), float(high)


def effective_fractions(name: str, records: list[dict], resamples: int) -> dict:
    """Within one RePO run: on-policy vs on-or-replayed fraction over the same prompt-steps, and their
    ratio, each with a prompt-cluster bootstrap interval; the ratio is >= 1 by construction."""
    for r in records:
        r.setdefault("prompt", r["group"])  # results written before issue 24 have no prompt identity
    pairs = [[r["on_nonzero"], r["either_nonzero"]] for r in records]
    labels = [r["prompt"] for r in records]
    ratio = ci.cluster_bootstrap(
        pairs, labels, lambda p: p[:, 1].mean() / p[:, 0].mean() if p[:, 0].mean() > 0 else np.nan, resamples=resamples
    )
    steps = sorted({r["step"] for r in records})
    return {
        "prompt_steps": len(records),
        "prompts": len(set(labels)),
        "on": _cluster_fraction(records, "on_nonzero", resamples),
        "on_or_replayed": _cluster_fraction(records, "either_nonzero", resamples),
        "ratio": ratio,
        "per_step": {
            "step": steps,
            "on": [sum(r["on_nonzero"] for r in records if r["step"] == t) for t in steps],
            "either": [sum(r["either_nonzero"] for r in records if r["step"] == t) for t in steps],
            "prompts": [sum(1 for r in records if r["step"] == t) for t in steps],
        },
    }


def cross_run_ratio(name: str, records: list[dict], base: str, base_records: list[dict], resamples: int) -> dict | None:
    """Effective fraction of ``name`` / of ``base`` over the step numbers both ran; each run's
    prompts resampled on their own (two independent cluster bootstraps)."""
    common = {r["step"] for r in records} & {r["step"] for r in base_records}
    a = [r for r in records if r["step"] in common]
    b = [r for r in base_records if r["step"] in common]
    if not a or not b:
        return None
    for r in a + b:
        r.setdefault("prompt", r["group"])
    da = ci.cluster_bootstrap([_effective(name, r) for r in a], [r["prompt"] for r in a], resamples=resamples, return_draws=True, seed=1)
    db = ci.cluster_bootstrap([_effective(base, r) for r in b], [r["prompt"] for r in b], resamples=resamples, return_draws=True, seed=2)
    low, high = _ratio_draws(da.pop("draws"), db.pop("draws"))
    estimate = da["estimate"] / db["estimate"] if db["estimate"] else None
    return {"prompt_steps": [len(a), len(b)], "steps": [min(common), max(common)],
            "ratio": {"estimate": estimate, "low": low, "high": high}}


def step_time_ratio(
    name: str, arm: dict, base: str, base_arm: dict, steps: set[int], block: int, resamples: int, alternate_every: int = 0
) -> dict | None:
    """Mean step time of ``name`` / of ``base`` over the paired steps in ``steps``, with a moving-block
    bootstrap (blocks of ``block`` steps) and, for reference, the ordinary paired bootstrap. With
    ``alternate_every`` K (arms run in resumed blocks of K steps) also the ratio without each block's
    first step, which carries the restarted process's warm-up in every arm."""
    base_rows = {r["step"]: r for r in base_arm["steps"]}
    pairs = [(base_rows[r["step"]], r) for r in arm["steps"] if r["step"] in steps and r["step"] in base_rows]
    if len(pairs) < 2:
        return None
    b = [p[0]["step_s"] for p in pairs]
    a = [p[1]["step_s"] for p in pairs]
    block = max(1, min(block, len(pairs)))
    skipped = {n: whole_update_skipped_steps(n, [p[i] for p in pairs]) for n, i in ((name, 1), (base, 0))}
    others = [i for i, p in enumerate(pairs) if p[1]["step"] not in skipped[name] and p[0]["step"] not in skipped[base]]
    return {
        "steps": len(pairs),
        "step_numbers": [p[1]["step"] for p in pairs],
        "ratio_of_means": ci.block_bootstrap_ratio(b, a, block, resamples=resamples),
        "ratio_of_means_iid_steps": ci.block_bootstrap_ratio(b, a, 1, resamples=resamples),
        "whole_update_skipped": skipped,
        "ratio_without_skipped_steps": (float(np.mean([a[i] for i in others]) / np.mean([b[i] for i in others])) if others else None),
        **({"ratio_without_block_first_steps": _ratio_where(pairs, a, b, lambda t: (t - 1) % alternate_every != 0)}
           if alternate_every else {}),
        "load_avg_per_step": {name: [p[1].get("load_avg") for p in pairs], base: [p[0].get("load_avg") for p in pairs]},
        "load_avg": {name: arm.get("load_avg_mean"), base: base_arm.get("load_avg_mean")},
    }


def _ratio_where(pairs, a, b, keep) -> float | None:
    idx = [i for i, p in enumerate(pairs) if keep(p[1]["step"])]
    return float(np.mean([a[i] for i in idx]) / np.mean([b[i] for i in idx])) if idx else None


def heldout_comparison(first: dict, second: dict, resamples: int) -> dict | None:
    """Second minus first on the same problems (per-problem results of both needed)."""
    p1, p2 = first.get("per_problem"), second.get("per_problem")
    if not p1 or not p2 or [p["index"] for p in p1] != [p["index"] for p in p2]:
        return None
    x, y = [p["correct"] for p in p1], [p["correct"] for p in p2]
    out = {"mcnemar": ci.mcnemar_exact(x, y), "difference": ci.paired_bootstrap_difference(x, y, resamples=resamples)}
    out["tokens"] = {"first_mean": _mean(p["tokens"] for p in p1), "second_mean": _mean(p["tokens"] for p in p2),
                     "first_truncated": _mean(p["truncated"] for p in p1), "second_truncated": _mean(p["truncated"] for p in p2)}
    return out


def accuracy_curve(arm: dict, base_heldout: dict | None) -> dict | None:
    """Held-out accuracy per evaluated step (step 0 = the base model when it was evaluated) and its AUC."""
    evals = arm.get("evaluations") or {}
    points = sorted((int(step), e["pass@1"]) for step, e in evals.items() if "pass@1" in e)
    if base_heldout and "pass@1" in base_heldout:
        points = [(0, base_heldout["pass@1"]), *points]
    if len(points) < 2:
        return None
    return {"steps": [p[0] for p in points], "accuracy": [p[1] for p in points],
            "auc": ci.auc([p[0] for p in points], [p[1] for p in points])}


def estimates(results: dict, resamples: int = 10_000) -> dict:
    """Every interval of a results dict (see the module docstring). Step-time ratios are taken of each
    replaying arm against each arm without replay that ran (``grpo_skip``: replay's marginal cost;
    ``stock_grpo``: what a user switching sees)."""
    arms, replay = results["arms"], set(results["replay_steps"])
    baseline = baseline_of(arms)
    steps_per_epoch = (min(replay) - 1) if replay else 1
    out: dict = {"baseline": baseline, "replay_steps": sorted(replay), "within_run": {}, "vs_baseline": {}, "step_time": {},
                 "block_steps": steps_per_epoch, "curves": {}, "heldout_paired": {}}
    replay_records = {n: [r for r in a.get("prompt_steps", []) if r["step"] in replay] for n, a in arms.items()}
    for name in arms:
        if name in GRPO_ARMS:
            if replay_records[name]:
                out["within_run"][name] = {"prompt_steps": len(replay_records[name]),
                                           "on": _cluster_fraction_safe(replay_records[name], resamples)}
            continue
        if replay_records[name]:
            out["within_run"][name] = effective_fractions(name, replay_records[name], resamples)
            if baseline and replay_records[baseline]:
                vs = cross_run_ratio(name, replay_records[name], baseline, replay_records[baseline], resamples)
                if vs:
                    out["vs_baseline"][name] = vs
    no_replay = [n for n in arms if n in GRPO_ARMS]
    pairs = [(n, b) for n in arms if n not in GRPO_ARMS for b in no_replay]
    pairs += [(n, STOCK_GRPO) for n in no_replay if n != STOCK_GRPO and STOCK_GRPO in arms]
    for name, base in pairs:
        t = step_time_ratio(name, arms[name], base, arms[base], replay, steps_per_epoch, resamples,
                            int((results.get("settings") or {}).get("alternate_every") or 0))
        if t:
            out["step_time"][f"{name} / {base}"] = t
    held = {name: arm["heldout"] for name, arm in arms.items() if arm.get("heldout")}
    if results.get("base_heldout"):
        held["base model"] = results["base_heldout"]
    out["heldout"] = {name: ci.wilson_interval(h["correct"], h["problems"]) for name, h in held.items() if "correct" in h}
    names = list(held)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            cmp = heldout_comparison(held[first], held[second], resamples)
            if cmp:
                out["heldout_paired"][f"{second} - {first}"] = cmp
    # every evaluated step both arms of a pair reached: the same problems, compared problem by problem
    evaluated = {n: a.get("evaluations") or {} for n, a in arms.items()}
    out["heldout_paired_by_step"] = {}
    for i, first in enumerate(names := [n for n in arms if evaluated[n]]):
        for second in names[i + 1:]:
            for step in sorted(set(evaluated[first]) & set(evaluated[second]), key=int):
                cmp = heldout_comparison(evaluated[first][step], evaluated[second][step], resamples)
                if cmp:
                    out["heldout_paired_by_step"].setdefault(step, {})[f"{second} - {first}"] = cmp
    for name, arm in arms.items():
        curve = accuracy_curve(arm, results.get("base_heldout"))
        if curve:
            out["curves"][name] = curve
    return out


def _cluster_fraction_safe(records: list[dict], resamples: int) -> dict:
    for r in records:
        r.setdefault("prompt", r["group"])
    return _cluster_fraction(records, "on_nonzero", resamples)


def step_bands(name: str, prompt_steps: list[dict], window: int = 5, resamples: int = 1000) -> dict[str, list]:
    """Per step: mean reward and effective non-zero fraction over the prompt-steps of a centred
    window of ``window`` steps, each with a bootstrap 95% interval over those prompt-steps."""
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
