"""benchmarks/bench_repo_vs_grpo.py end to end on the tiny model (repo_ext.cpu.tiny_run), about 6 min:
two arms (verl's stock GRPO and RePO recent_k with skipping), two steps each, alternating
(``--alternate-every 1``: each arm runs step 1, then step 2 in a new process resumed from its step-1
checkpoint), no held-out evaluation; every output file (JSON, Markdown, PNG) and every per-step field.

Its own file so that ``make test``'s pytest workers (``--dist loadfile``: one file, one worker) can run
it beside the other long end-to-end files. One run checks both the per-step records (what a one-step
run of either arm writes) and the resumed segments, so the suite starts verl four times for it, not six.
"""

from __future__ import annotations

import json
import math

import pytest


def _check_first_step(arm: dict, prompts: int, samples: int, skips_rows: bool) -> None:
    row = arm["steps"][0]
    assert row["step"] == 1 and 0.0 <= row["reward_mean"] <= 1.0
    # 2 prompts: the fraction of prompts with a non-zero advantage is 0, 1/2 or 1 (stock GRPO's from
    # verl's rollout dump, RePO's from the trainer's metrics); nothing is replayed at step 1
    assert row["nonzero_adv_frac_on"] in (0.0, 0.5, 1.0) and row["nonzero_adv_frac_all"] == row["nonzero_adv_frac_on"]
    assert row["nonzero_adv_frac_off"] is None
    phases = row["gen_s"] + row["old_log_prob_s"] + row["update_s"] + row["repo_store_s"]
    assert 0.0 < phases <= row["step_s"] and row["gen_s"] > 0 and row["update_s"] > 0
    # on-policy tokens: at most prompts x samples x (64 prompt + 16 response tokens)
    assert 0 < row["tokens_on_policy"] <= prompts * samples * (64 + 16)
    # nothing replayed at step 1; only an arm with zero-advantage skipping may train fewer tokens
    if skips_rows:
        assert row["tokens_trained"] <= row["tokens_on_policy"]
    else:
        assert row["tokens_trained"] == row["tokens_on_policy"]
    # verl's driver, Ray's daemons and workers (each imports torch): well over 300 MiB together
    assert row["peak_rss_gib"] > 0.3 and not math.isnan(row["peak_rss_gib"])
    assert arm["load_avg_mean"] is not None and row["load_avg"] is not None
    # one record per prompt and step, from the arm's rollout dump
    first = [r for r in arm["prompt_steps"] if r["step"] == 1]
    assert len(first) == prompts and row["nonzero_adv_frac_on"] == sum(r["on_nonzero"] for r in first) / prompts


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_two_arms_two_alternating_steps_on_the_tiny_model(bench, tmp_path):
    prompts, samples = 2, 2
    results = bench.main([
        "--model", "tiny", "--arms", "stock_grpo,recent_k_skip", "--steps", "2", "--alternate-every", "1",
        "--train-prompts", str(prompts), "--prompts-per-step", str(prompts), "--samples", str(samples),
        "--response-length", "16", "--skip-eval", "--out", str(tmp_path / "results"), "--work-dir", str(tmp_path / "work"),
        "--run-timeout", "400", "--rss-interval", "0.5",
    ])
    written = json.loads((tmp_path / "results" / "bench_repo_vs_grpo.json").read_text())
    # the arms' order rotates from block to block: compare sets
    assert set(written["arms"]) == {"stock_grpo", "recent_k_skip"} == set(results["arms"])
    assert (tmp_path / "results" / "bench_repo_vs_grpo.png").stat().st_size > 10_000
    table = (tmp_path / "results" / "bench_repo_vs_grpo.md").read_text()
    assert "| stock_grpo | 2 |" in table and "| recent_k_skip | 2 |" in table
    stock, repo = written["arms"]["stock_grpo"], written["arms"]["recent_k_skip"]
    assert "algorithm=grpo" in stock["overrides"] and not any(o.startswith("algorithm.repo.") for o in stock["overrides"])
    assert "algorithm.repo.strategy=recent_k" in repo["overrides"]
    _check_first_step(stock, prompts, samples, skips_rows=False)
    _check_first_step(repo, prompts, samples, skips_rows=True)
    assert repo["steps"][0]["on_policy_rows"] == prompts * samples and repo["steps"][0]["replayed_rows"] == 0
    # same weights, data order and rollout seed: step 1 generates the same responses in both arms
    assert stock["steps"][0]["tokens_on_policy"] == repo["steps"][0]["tokens_on_policy"]
    first = [sorted(r["reward"] for r in arm["prompt_steps"] if r["step"] == 1) for arm in (stock, repo)]
    assert first[0] == first[1]
    assert repo["steps"][0]["store_entries"] == prompts * samples

    # the segments: each arm ran step 1, then step 2 in a new process resumed from its checkpoint
    assert stock["segments"] == repo["segments"] == 2
    assert [r["step"] for r in stock["steps"]] == [r["step"] for r in repo["steps"]] == [1, 2]
    # step 2 replays what step 1 stored: the store came back from the checkpoint in the new process
    assert repo["steps"][1]["replayed_rows"] == prompts * samples and repo["steps"][1]["store_entries"] == 2 * prompts * samples
    # the same data order after resuming: step 2 trains on the same prompts in both arms
    assert sorted(r["prompt"] for r in repo["prompt_steps"] if r["step"] == 2) == sorted(
        r["prompt"] for r in repo["prompt_steps"] if r["step"] == 1)
    assert not (tmp_path / "work" / "stock_grpo" / "checkpoints").exists()
    assert written["replay_steps"] == [2] and written["arms"]["recent_k_skip"]["segments"] == 2
    assert written["ratios"]["recent_k_skip"]["step_time_ratio_all_steps"] > 0
    assert written["estimates"]["baseline"] == "stock_grpo"
