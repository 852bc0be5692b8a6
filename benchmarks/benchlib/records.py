"""What a run leaves behind, turned into records: per prompt-step (prompt identity, step, whether
its on-policy / replayed group had a non-zero advantage, mean reward), per step (verl's metrics,
phase times, load) and per arm (means), plus the point ratios between arms."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from benchlib.settings import GRPO_ARMS, PHASES, baseline_of

def prompt_steps_from_repo_dump(dump_dir: Path) -> list[dict]:
    """Per prompt-step records from the RePO trainer's ``REPO_EXT_DUMP_DIR`` (``step_N.pt``: every row
    the actor saw, with its uid, off-policy flag, advantages and token rewards).

    A group (verl uid; replayed rows carry their prompt's uid plus a suffix) has a non-zero advantage
    when any of its rows has a non-zero advantage on some token. ``prompt`` is the trainer's
    ``prompt_key`` (a hash of the prompt's token ids): the same prompt has the same key in every step
    of the run, so a prompt's visits can be resampled together (prompt-cluster bootstrap).
    """
    import torch

    from repo_ext.integration.replay_rows import split_uid

    records = []
    for path in sorted(dump_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1])):
        step = int(path.stem.split("_")[1])
        rows = torch.load(path, weights_only=False)
        groups: dict[str, dict] = {}
        keys = rows.get("prompt_key") or [None] * len(rows["uid"])
        for uid, off, adv, scores, pkey in zip(
            rows["uid"], rows["off_policy"], rows["advantages"], rows["rm_scores"], keys, strict=True
        ):
            group, _ = split_uid(uid)
            g = groups.setdefault(group, {"on": [], "off": [], "rewards": [], "prompt": None})
            g["prompt"] = g["prompt"] or pkey
            nonzero = bool(adv.numel()) and float(adv.abs().max()) > 0
            if off:
                g["off"].append(nonzero)
            else:
                g["on"].append(nonzero)
                g["rewards"].append(float(scores.sum()))
        for group, g in groups.items():
            records.append(
                _prompt_step(step, group, any(g["on"]), any(g["off"]) if g["off"] else None, g["rewards"], g["prompt"] or group)
            )
    return records


def prompt_steps_from_rollout_dump(rollout_dir: Path) -> list[dict]:
    """Per prompt-step records from verl's ``trainer.rollout_data_dir`` (``N.jsonl``, one line per
    on-policy row with its TransferQueue key ``{uid}_{session}_{index}`` and score). GRPO's advantage
    is zero for the whole group exactly when all its rewards are equal. ``prompt``: a hash of the
    decoded prompt text (``input``), stable across the run's steps; it is not the RePO trainer's
    ``prompt_key`` (a hash of token ids), so prompt identities are compared within an arm only."""
    records = []
    for path in sorted(rollout_dir.glob("*.jsonl"), key=lambda p: int(p.stem)):
        groups: dict[str, list[float]] = {}
        prompt_of: dict[str, str] = {}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            group = str(row["uid"]).rsplit("_", 2)[0]
            groups.setdefault(group, []).append(float(row["score"]))
            prompt_of.setdefault(group, "text:" + hashlib.blake2b(str(row.get("input", group)).encode(), digest_size=16).hexdigest())
        for group, rewards in groups.items():
            records.append(_prompt_step(int(path.stem), group, len(set(rewards)) > 1, None, rewards, prompt_of[group]))
    return records


def _prompt_step(
    step: int, group: str, on_nonzero: bool, off_nonzero: bool | None, rewards: list[float], prompt: str | None = None
) -> dict:
    return {
        "step": step,
        "group": group,
        "prompt": prompt if prompt is not None else group,
        "on_nonzero": int(on_nonzero),
        "off_nonzero": None if off_nonzero is None else int(off_nonzero),
        "either_nonzero": int(on_nonzero or bool(off_nonzero)),
        "reward": sum(rewards) / len(rewards) if rewards else None,
    }


def _get(d: dict, key: str) -> float | None:
    value = d.get(key)
    return None if value is None else float(value)


def step_rows(records: list[dict], sampler) -> list[dict]:
    """One flat dict per step with everything the tables and plots use (seconds, bytes, fractions);
    ``sampler``: the arm's :class:`benchlib.runs.TreeSampler` (peak RSS, load average per step)."""
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


def fill_step_fractions(rows: list[dict], prompt_steps: list[dict]) -> None:
    """Per-step non-zero-advantage fractions from the prompt-step records where verl logged none (stock GRPO)."""
    for row in rows:
        sel = [r for r in prompt_steps if r["step"] == row["step"]]
        if sel and row.get("nonzero_adv_frac_on") is None:
            row["nonzero_adv_frac_on"] = _mean(r["on_nonzero"] for r in sel)
            row["nonzero_adv_frac_all"] = _mean(r["either_nonzero"] for r in sel)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
