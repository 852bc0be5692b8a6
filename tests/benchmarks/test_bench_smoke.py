"""benchmarks/bench_repo_vs_grpo.py: its summaries and ratios by hand, and a 1-step smoke run.

The smoke run is the script's ``main`` on the tiny model and tiny reward (repo_ext.cpu.tiny_run):
two arms (GRPO, RePO recent_k), one step each, no held-out evaluation.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_repo_vs_grpo.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_repo_vs_grpo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _row(step, on, allf, step_s, store_s, reward=0.5):
    return {
        "step": step, "reward_mean": reward, "nonzero_adv_frac_on": on, "nonzero_adv_frac_off": None,
        "nonzero_adv_frac_all": allf, "step_s": step_s, "gen_s": 1.0, "old_log_prob_s": 1.0, "update_s": 1.0,
        "repo_store_s": store_s, "tokens_trained": 100.0, "replayed_rows": 0.0, "peak_rss_gib": 1.0 + step,
    }


def test_summary_and_ratios_by_hand(bench):
    grpo = [_row(1, 0.5, 0.5, 10.0, 0.0), _row(2, 0.25, 0.25, 10.0, 0.0), _row(3, 0.25, 0.25, 12.0, 0.0)]
    repo = [_row(1, 0.5, 0.5, 10.0, 0.1), _row(2, 0.25, 0.75, 14.0, 0.2), _row(3, 0.0, 0.5, 16.0, 0.3)]
    arms = {
        "grpo": {"summary": bench.arm_summary(grpo, [2, 3]), "heldout": {"pass@1": 0.25}},
        "recent_k": {"summary": bench.arm_summary(repo, [2, 3]), "heldout": {"pass@1": 0.375}},
    }
    s = arms["recent_k"]["summary"]
    assert s["replay_steps"]["nonzero_adv_frac_all"] == pytest.approx(0.625)  # (0.75 + 0.5) / 2
    assert s["repo_store_share_of_step_time"] == pytest.approx(0.6 / 40.0)
    assert s["peak_rss_gib"] == 4.0
    q = bench.ratios(arms)
    assert set(q) == {"recent_k"}
    # replay steps: RePO (0.75 + 0.5)/2 = 0.625 against GRPO (0.25 + 0.25)/2 = 0.25
    assert q["recent_k"]["effective_step_ratio_replay_steps"] == pytest.approx(2.5)
    # all steps: (0.5 + 0.75 + 0.5)/3 against (0.5 + 0.25 + 0.25)/3
    assert q["recent_k"]["effective_step_ratio_all_steps"] == pytest.approx(1.75)
    assert q["recent_k"]["step_time_ratio_replay_steps"] == pytest.approx(15.0 / 11.0)
    assert q["recent_k"]["same_run_all_over_on_replay_steps"] == pytest.approx(0.625 / 0.125)
    assert q["recent_k"]["heldout_pass@1_minus_grpo"] == pytest.approx(0.125)


def test_pooled_replay_effect_by_hand(bench):
    arms = {
        "grpo": {"steps": [_row(2, 1.0, 1.0, 1.0, 0.0)]},  # the baseline does not enter
        "recent_k": {"steps": [_row(1, 0.5, 0.5, 1.0, 0.0), _row(2, 0.25, 0.5, 1.0, 0.0)]},
        "highest_k": {"steps": [_row(2, 0.25, 1.0, 1.0, 0.0)]},
    }
    pooled = bench.pooled_replay_effect(arms, replay_steps=[2])
    # replay step 2 of the two RePO arms: on (0.25 + 0.25)/2, either (0.5 + 1.0)/2
    assert pooled == {"steps": 2, "nonzero_adv_frac_on": 0.25, "nonzero_adv_frac_all": 0.75, "all_over_on": 3.0}
    assert bench.pooled_replay_effect(arms, replay_steps=[]) is None


def test_bad_arguments_name_the_setting(bench):
    with pytest.raises(SystemExit, match="unknown arm"):
        bench.main(["--arms", "grpo,fifo"])
    with pytest.raises(SystemExit, match="--train-prompts=3 must be a multiple of --prompts-per-step=2"):
        bench.main(["--train-prompts", "3", "--prompts-per-step", "2"])


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_one_step_two_arms_on_the_tiny_model(bench, tmp_path):
    prompts, samples = 2, 2
    results = bench.main([
        "--model", "tiny", "--arms", "grpo,recent_k", "--steps", "1", "--train-prompts", str(prompts),
        "--prompts-per-step", str(prompts), "--samples", str(samples), "--response-length", "16",
        "--skip-eval", "--out", str(tmp_path / "results"), "--work-dir", str(tmp_path / "work"),
        "--run-timeout", "280", "--rss-interval", "0.5",
    ])
    written = json.loads((tmp_path / "results" / "bench_repo_vs_grpo.json").read_text())
    assert list(written["arms"]) == ["grpo", "recent_k"] == list(results["arms"])
    assert (tmp_path / "results" / "bench_repo_vs_grpo.png").stat().st_size > 10_000
    table = (tmp_path / "results" / "bench_repo_vs_grpo.md").read_text()
    assert "| grpo | 1 |" in table and "| recent_k | 1 |" in table
    for name in ("grpo", "recent_k"):
        arm = written["arms"][name]
        assert arm["overrides"][3] == f"algorithm.repo.strategy={'none' if name == 'grpo' else 'recent_k'}"
        (row,) = arm["steps"]
        assert row["step"] == 1
        assert row["on_policy_rows"] == prompts * samples and row["replayed_rows"] == 0  # empty store at step 1
        assert 0.0 <= row["reward_mean"] <= 1.0
        # 2 prompts: the fraction of prompts with a non-zero advantage is 0, 1/2 or 1
        assert row["nonzero_adv_frac_on"] in (0.0, 0.5, 1.0) and row["nonzero_adv_frac_all"] == row["nonzero_adv_frac_on"]
        assert row["nonzero_adv_frac_off"] is None
        phases = row["gen_s"] + row["old_log_prob_s"] + row["update_s"] + row["repo_store_s"]
        assert 0.0 < phases <= row["step_s"] and row["gen_s"] > 0 and row["update_s"] > 0
        # on-policy tokens: at most prompts x samples x (64 prompt + 16 response tokens)
        assert 0 < row["tokens_on_policy"] <= prompts * samples * (64 + 16)
        assert row["tokens_trained"] == row["tokens_on_policy"]  # nothing replayed
        # verl's driver, Ray's daemons and workers (each imports torch): well over 300 MiB together
        assert row["peak_rss_gib"] > 0.3 and not math.isnan(row["peak_rss_gib"])
        assert arm["load_avg_mean"] is not None
    assert written["arms"]["recent_k"]["steps"][0]["store_entries"] == prompts * samples
    assert written["arms"]["grpo"]["steps"][0]["store_entries"] == 0
    assert written["replay_steps"] == []
    assert written["ratios"]["recent_k"]["step_time_ratio_all_steps"] > 0
