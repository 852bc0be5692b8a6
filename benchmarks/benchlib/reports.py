"""Reports of a results dict: the Markdown file, the console summary, and writing JSON/MD/PNG."""

from __future__ import annotations

import json
from pathlib import Path

from benchlib.estimates import estimates
from benchlib.plots import plot
from benchlib.records import pooled_replay_effect, ratios
from benchlib.settings import PAPER, PAPER_LINE

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
    """The estimates of :func:`benchlib.estimates.estimates` as Markdown lines (estimate [95% interval])."""
    if not est:
        return []
    base = est["baseline"] or "-"
    lines = [
        "## Estimates with 95% intervals (over the replay steps)",
        "",
        "Fractions and their ratios: bootstrap over prompts (all visits of a prompt resampled together, 10,000 "
        f"resamples, percentile interval). Step time: moving-block bootstrap, blocks of {est.get('block_steps', 1)} "
        "consecutive paired steps. Held-out: Wilson intervals; paired arms: exact McNemar test and paired bootstrap. "
        "The same-run ratio is on-or-replayed over on-policy of the same prompt-steps: >= 1 by construction.",
    ]
    within = {n: w for n, w in est["within_run"].items() if "ratio" in w}
    if within:
        lines += ["", "| RePO arm | prompt-steps (prompts) | non-zero on-policy | non-zero on or replayed | ratio (same run) "
                  f"| ratio vs {base} (prompt-steps) |", "|---|---|---|---|---|---|"]
    for name, w in within.items():
        vs = est["vs_baseline"].get(name)
        vs_cell = (
            f"{_interval(vs['ratio'], '.2f')} ({vs['prompt_steps'][0]} vs {vs['prompt_steps'][1]}"
            + (f", steps {vs['steps'][0]}-{vs['steps'][1]})" if "steps" in vs else ")")
        ) if vs else "-"
        lines.append(
            f"| {name} | {w['prompt_steps']} ({w.get('prompts', '-')}) | {_interval(w['on'])} | {_interval(w['on_or_replayed'])} "
            f"| {_interval(w['ratio'], '.2f')} | {vs_cell} |"
        )
    for name, w in est["within_run"].items():
        if "ratio" not in w:
            lines.append(f"\n{name}: on-policy groups with a non-zero advantage {_interval(w['on'])} over {w['prompt_steps']} prompt-steps.")
    if est["step_time"]:
        lines += ["", "| step time ratio | paired steps | ratio of mean step times [block bootstrap 95%] | [steps independent] "
                  "| without whole-update-skipped steps | steps with the whole update skipped | mean load (arm, base) |",
                  "|---|---|---|---|---|---|---|"]
        for pair, t in est["step_time"].items():
            name, base_name = pair.split(" / ")
            skipped = "; ".join(f"{n}: {v if v else 'none'}" for n, v in t["whole_update_skipped"].items())
            lines.append(
                f"| {pair} | {t['steps']} | {_interval(t['ratio_of_means'], '.2f')} | {_interval(t['ratio_of_means_iid_steps'], '.2f')} "
                f"| {_fmt(t['ratio_without_skipped_steps'])}"
                + (f" (without each block's first step: {_fmt(t['ratio_without_block_first_steps'])})"
                   if "ratio_without_block_first_steps" in t else "")
                + f" | {skipped} "
                f"| {_fmt(t['load_avg'].get(name), '.1f')}, {_fmt(t['load_avg'].get(base_name), '.1f')} |"
            )
    if est.get("heldout"):
        lines += ["", "| held-out accuracy | correct / problems | 95% Wilson interval |", "|---|---|---|"]
        for name, w in est["heldout"].items():
            lines.append(f"| {name} | {w['successes']} / {w['trials']} | {_interval(w)} |")
    # a comparison "A - B" is estimates.heldout_comparison(first=B, second=A): every cell lists A, then B
    if est.get("heldout_paired"):
        lines += ["", "| paired held-out comparison A - B | difference A - B [paired bootstrap 95%] | only A right / only B right "
                  "| McNemar exact p | mean answer tokens (A, B) | truncated (A, B) |", "|---|---|---|---|---|---|"]
        for pair, c in est["heldout_paired"].items():
            m, tok = c["mcnemar"], c["tokens"]
            lines.append(
                f"| {pair} | {_interval(c['difference'])} | {m['second_only']} / {m['first_only']} | {m['p_value']:.3f} "
                f"| {_fmt(tok['second_mean'], '.1f')}, {_fmt(tok['first_mean'], '.1f')} "
                f"| {_fmt(tok['second_truncated'])}, {_fmt(tok['first_truncated'])} |"
            )
    if est.get("heldout_paired_by_step"):
        lines += ["", "| evaluated step | paired comparison A - B | difference A - B [paired bootstrap 95%] | only A right / only B right "
                  "| McNemar exact p | mean answer tokens (A, B) |", "|---|---|---|---|---|---|"]
        for step, pairs in est["heldout_paired_by_step"].items():
            for pair, c in pairs.items():
                m, tok = c["mcnemar"], c["tokens"]
                lines.append(
                    f"| {step} | {pair} | {_interval(c['difference'])} | {m['second_only']} / {m['first_only']} | {m['p_value']:.3f} "
                    f"| {_fmt(tok['second_mean'], '.1f')}, {_fmt(tok['first_mean'], '.1f')} |"
                )
    if est.get("curves"):
        lines += ["", "| held-out accuracy curve | steps | accuracy | area under the curve (mean height) |", "|---|---|---|---|"]
        for name, c in est["curves"].items():
            lines.append(f"| {name} | {c['steps']} | {[round(a, 3) for a in c['accuracy']]} | {c['auc']:.4f} |")
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
                  f"ratio {_fmt(pooled['all_over_on'])} (>= 1 by construction; the paper's "
                  f"{PAPER['effective_step_ratio']:.2f} was measured at an on-policy fraction of 31%)."]
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
              f"(ratio {_fmt(pooled['all_over_on'])}, >= 1 by construction; paper {PAPER['effective_step_ratio']:.2f} "
              "at an on-policy fraction of 31%)")
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
