"""benchmarks/bench_repo_vs_grpo.py --alternate-every on the tiny model: two arms, each resumed from
its checkpoint in a new process between steps (about 6 min).

Its own file so that ``make test``'s pytest workers (``--dist loadfile``: one file, one worker) can
run it beside ``test_bench_smoke.py``'s other e2e run instead of after it.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_alternating_two_arms_resume_on_the_tiny_model(bench, tmp_path):
    # each arm runs step 1, then step 2 in a new process resumed from its step-1 checkpoint
    prompts, samples = 2, 2
    results = bench.main([
        "--model", "tiny", "--arms", "stock_grpo,recent_k_skip", "--steps", "2", "--alternate-every", "1",
        "--train-prompts", str(prompts), "--prompts-per-step", str(prompts), "--samples", str(samples),
        "--response-length", "16", "--skip-eval", "--out", str(tmp_path / "results"), "--work-dir", str(tmp_path / "work"),
        "--run-timeout", "400", "--rss-interval", "0.5",
    ])
    stock, repo = results["arms"]["stock_grpo"], results["arms"]["recent_k_skip"]
    assert stock["segments"] == repo["segments"] == 2
    assert [r["step"] for r in stock["steps"]] == [r["step"] for r in repo["steps"]] == [1, 2]
    # step 2 replays what step 1 stored: the store came back from the checkpoint in the new process
    assert repo["steps"][1]["replayed_rows"] == prompts * samples and repo["steps"][1]["store_entries"] == 2 * prompts * samples
    # the same data order after resuming: step 2 trains on the same prompts in both arms
    assert sorted(r["prompt"] for r in repo["prompt_steps"] if r["step"] == 2) == sorted(
        r["prompt"] for r in repo["prompt_steps"] if r["step"] == 1)
    assert stock["steps"][0]["tokens_on_policy"] == repo["steps"][0]["tokens_on_policy"]
    assert not (tmp_path / "work" / "stock_grpo" / "checkpoints").exists()
    written = json.loads((tmp_path / "results" / "bench_repo_vs_grpo.json").read_text())
    assert written["replay_steps"] == [2] and written["arms"]["recent_k_skip"]["segments"] == 2
