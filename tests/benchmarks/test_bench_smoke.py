"""benchmarks/bench_repo_vs_grpo.py: its summaries, ratios, estimates and plans by hand.

The script's ``main`` on the tiny model (two arms, two steps, every output file) runs in
test_bench_alternating.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

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
    # RePO ran a 4th step GRPO did not: with the per-step rows, both sides over steps 1-3 only
    arms["recent_k"]["steps"] = [*repo, _row(4, 0.0, 0.0, 100.0, 0.0)]
    arms["grpo"]["steps"] = grpo
    arms["recent_k"]["summary"] = bench.arm_summary(arms["recent_k"]["steps"], [2, 3, 4])
    q = bench.ratios(arms, [2, 3, 4])
    assert q["recent_k"]["effective_step_ratio_replay_steps"] == pytest.approx(2.5)
    assert q["recent_k"]["step_time_ratio_all_steps"] == pytest.approx((40.0 / 3) / (32.0 / 3))
    assert q["recent_k"]["same_run_all_over_on_replay_steps"] == pytest.approx((1.25 / 3) / (0.25 / 3))  # own steps


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


def _dump_rows(uids, off, adv_rows, rewards):
    import torch

    return {
        "uid": uids, "off_policy": off,
        "advantages": [torch.tensor(a, dtype=torch.float32) for a in adv_rows],
        # the reward sits on the last response token
        "rm_scores": [torch.tensor([0.0, r]) for r in rewards],
    }


def test_prompt_steps_from_both_dumps_by_hand(bench, tmp_path):
    import torch

    dump = tmp_path / "dump"
    dump.mkdir()
    # step 2: prompt a: on rows rewards 1, 0 (advantages +-0.7), replayed rows all-equal (0);
    # prompt b: on rows both 0 (advantage 0), no replay
    torch.save(_dump_rows(
        ["a", "a", "a__off", "a__off", "b", "b"], [0, 0, 1, 1, 0, 0],
        [[0.7, 0.7], [-0.7, -0.7], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
    ), dump / "step_2.pt")
    from repo_ext.integration.replay_rows import OFF_POLICY_UID_SUFFIX

    raw = torch.load(dump / "step_2.pt", weights_only=False)
    raw["uid"] = [u.replace("__off", OFF_POLICY_UID_SUFFIX) for u in raw["uid"]]
    # the trainer's prompt identity (a hash of the prompt's token ids), the same for a prompt's replayed rows
    raw["prompt_key"] = ["key-a", "key-a", "key-a", "key-a", "key-b", "key-b"]
    torch.save(raw, dump / "step_2.pt")
    records = {r["group"]: r for r in bench.prompt_steps_from_repo_dump(dump)}
    assert records["a"] == {"step": 2, "group": "a", "prompt": "key-a", "on_nonzero": 1, "off_nonzero": 0, "either_nonzero": 1,
                            "reward": 0.5}
    assert records["b"] == {"step": 2, "group": "b", "prompt": "key-b", "on_nonzero": 0, "off_nonzero": None, "either_nonzero": 0,
                            "reward": 0.0}

    rollouts = tmp_path / "rollouts"
    rollouts.mkdir()
    lines = [{"uid": "u1_0_0", "score": 1.0, "input": "1 + 2 ="}, {"uid": "u1_1_0", "score": 1.0, "input": "1 + 2 ="},
             {"uid": "u2_0_0", "score": 0.0, "input": "3 - 1 ="}, {"uid": "u2_1_0", "score": 1.0, "input": "3 - 1 ="}]
    (rollouts / "3.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    records = {r["group"]: r for r in bench.prompt_steps_from_rollout_dump(rollouts)}
    assert records["u1"]["on_nonzero"] == 0 and records["u1"]["reward"] == 1.0  # all equal: no gradient
    assert records["u2"]["on_nonzero"] == 1 and records["u2"]["reward"] == 0.5 and records["u2"]["step"] == 3
    # stock GRPO's prompt identity: the decoded prompt text, hashed (stable across the run's steps)
    assert records["u2"]["prompt"] == "text:" + hashlib.blake2b(b"3 - 1 =", digest_size=16).hexdigest()


def _ps(step, on, off=None, reward=0.5, prompt=None):
    return {"step": step, "group": f"g{step}", "prompt": prompt or f"p{step}", "on_nonzero": on, "off_nonzero": off,
            "either_nonzero": int(on or bool(off)), "reward": reward}


def test_estimates_by_hand(bench):
    # step 1: no replay; step 5: a replay step the baseline did not run
    repo_ps = [_ps(2, 1, 0, prompt="x"), _ps(2, 0, 1, prompt="y"), _ps(3, 0, 0, prompt="x"), _ps(3, 1, 1, prompt="y"), _ps(1, 1),
               _ps(5, 1, 1, prompt="x")]
    base_ps = [_ps(2, 1), _ps(2, 0), _ps(3, 0), _ps(3, 0), _ps(4, 1)]
    problems = [{"index": i, "correct": c, "tokens": 10 + i, "truncated": 0} for i, c in enumerate([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])]
    base_problems = [{"index": i, "correct": 0, "tokens": 48, "truncated": 1} for i in range(10)]
    arms = {
        "recent_k_skip": {"prompt_steps": repo_ps, "load_avg_mean": 1.0,
                          "steps": [_row(1, 1, 1, 10.0, 0), _row(2, 0.5, 1, 12.0, 0), _row(3, 0.5, 0.5, 15.0, 0)],
                          "heldout": {"correct": 5, "problems": 10, "pass@1": 0.5, "per_problem": problems},
                          "evaluations": {"2": {"pass@1": 0.3}, "3": {"pass@1": 0.5, "per_problem": problems}}},
        "grpo_skip": {"prompt_steps": base_ps, "load_avg_mean": 3.0,
                      "steps": [_row(1, 1, 1, 10.0, 0), _row(2, 0.5, 0.5, 8.0, 0), _row(3, 0, 0, 5.0, 0)],
                      "evaluations": {"3": {"pass@1": 0.2, "per_problem": [dict(p, correct=int(p["index"] < 2)) for p in problems]}}},
        "stock_grpo": {"prompt_steps": base_ps, "load_avg_mean": 2.0,
                       "steps": [_row(1, 1, 1, 10.0, 0), _row(2, 0.5, 0.5, 10.0, 0), _row(3, 0, 0, 10.0, 0)]},
    }
    est = bench.estimates({"arms": arms, "replay_steps": [2, 3, 5],
                           "base_heldout": {"correct": 0, "problems": 10, "pass@1": 0.0, "per_problem": base_problems}},
                          resamples=200)
    assert est["baseline"] == "stock_grpo"
    w = est["within_run"]["recent_k_skip"]
    # replay steps 2, 3, 5: on 3 of 5, on-or-replayed 4 of 5; two prompts (x: 3 visits, y: 2)
    assert (w["prompt_steps"], w["prompts"], w["on"]["estimate"], w["on_or_replayed"]["estimate"]) == (5, 2, 0.6, 0.8)
    assert w["ratio"]["estimate"] == pytest.approx(4 / 3)
    assert w["per_step"] == {"step": [2, 3, 5], "on": [1, 1, 1], "either": [2, 1, 1], "prompts": [2, 2, 1]}
    # against stock GRPO over the replay steps both ran, 2-3 (RePO's step 5 and GRPO's step 4 left
    # out): RePO 3/4 over GRPO 1/4
    vs = est["vs_baseline"]["recent_k_skip"]
    assert vs["prompt_steps"] == [4, 4] and vs["steps"] == [2, 3] and vs["ratio"]["estimate"] == pytest.approx(3.0)
    t = est["step_time"]["recent_k_skip / stock_grpo"]
    # steps 2, 3: mean 13.5 s against 10 s
    assert t["steps"] == 2 and t["ratio_of_means"]["estimate"] == pytest.approx(1.35)
    assert t["load_avg"] == {"recent_k_skip": 1.0, "stock_grpo": 2.0}
    # replay's marginal cost: against GRPO with the same skipping, 13.5 / 6.5; grpo_skip had no signal
    # in step 3 (on-policy fraction 0), so its whole update was skipped there
    m = est["step_time"]["recent_k_skip / grpo_skip"]
    assert m["ratio_of_means"]["estimate"] == pytest.approx(13.5 / 6.5)
    assert m["whole_update_skipped"] == {"recent_k_skip": [], "grpo_skip": [3]}
    assert m["ratio_without_skipped_steps"] == pytest.approx(12.0 / 8.0)
    assert est["step_time"]["grpo_skip / stock_grpo"]["ratio_of_means"]["estimate"] == pytest.approx(6.5 / 10)
    assert "ratio_without_block_first_steps" not in t  # the arms ran one after the other
    # run alternately in blocks of 2 steps (1-2, 3-4, ...): step 3 starts a block, so only step 2 is
    # kept: 12 / 10
    alt = bench.estimates({"arms": arms, "replay_steps": [2, 3, 5], "settings": {"alternate_every": 2}}, resamples=50)
    assert alt["step_time"]["recent_k_skip / stock_grpo"]["ratio_without_block_first_steps"] == pytest.approx(1.2)
    assert est["heldout"]["recent_k_skip"]["low"] == pytest.approx(0.23660, abs=1e-5)
    assert est["heldout"]["base model"]["high"] == pytest.approx(0.27753, abs=1e-5)
    # paired on the same 10 problems: the base model right on none, RePO on 5: McNemar p = 2 / 2^5
    paired = est["heldout_paired"]["base model - recent_k_skip"]
    assert paired["mcnemar"]["first_only"] == 5 and paired["mcnemar"]["p_value"] == pytest.approx(0.0625)
    assert paired["difference"]["estimate"] == pytest.approx(-0.5)
    assert paired["tokens"] == {"first_mean": 14.5, "second_mean": 48.0, "first_truncated": 0.0, "second_truncated": 1.0}
    # the same problems at an evaluated step both arms reached: grpo_skip right on problems 0-1 at step 3,
    # RePO on 0-4 -> RePO alone right on 3 problems, McNemar p = 2 / 2^3
    by_step = est["heldout_paired_by_step"]["3"]["grpo_skip - recent_k_skip"]
    assert (by_step["mcnemar"]["first_only"], by_step["mcnemar"]["second_only"]) == (3, 0)
    assert by_step["mcnemar"]["p_value"] == pytest.approx(0.25) and by_step["difference"]["estimate"] == pytest.approx(-0.3)
    assert "heldout_paired_by_step" in est and "2" not in est["heldout_paired_by_step"]  # grpo_skip has no step-2 evaluation
    # accuracy curve 0 -> 0.3 -> 0.5 at steps 0, 2, 3: (0.15 x 2 + 0.4 x 1) / 3
    assert est["curves"]["recent_k_skip"]["auc"] == pytest.approx(0.7 / 3)
    table = "\n".join(bench.estimates_markdown(est))
    assert "| recent_k_skip | 5 (2) | 0.600 [" in table and "| base model | 0 / 10 |" in table
    assert "| recent_k_skip / grpo_skip | 2 | 2.08 [" in table
    # "A - B" lists A first in every cell: the base model (A) right alone on 0 problems, RePO (B) on 5;
    # answers 48 tokens (all cut) against 14.5 (none cut)
    assert "| base model - recent_k_skip | -0.500 [" in table and "| 0 / 5 | 0.062 | 48.0, 14.5 | 1.00, 0.00 |" in table
    assert "| 3 | grpo_skip - recent_k_skip | -0.300 [" in table and "| 0 / 3 | 0.250 |" in table


def test_plan_by_hand(bench):
    calibration = {
        "settings": {"prompts_per_step": 2, "samples": 2, "response_length": 10, "eval_max_new_tokens": 10},
        "arms": {"grpo": {
            "steps": [{"step": 2, "on_policy_rows": 4, "gen_s": 4.0, "old_log_prob_s": 2.0, "update_s": 8.0,
                       "other_s": 1.0, "tokens_on_policy": 100.0, "tokens_trained": 100.0, "response_length_mean": 5.0}],
            "startup_seconds": 30.0, "heldout": {"seconds": 20.0, "problems": 2}, "summary": {"peak_rss_gib": 3.0},
            "load_avg_mean": 1.0,
        }},
    }
    rates = bench.calibration_rates(calibration)
    # gen 4 s / (4 rows x 10 tokens); old-lp 2/100 per token; update 8/100; prompt tokens 100/4 - 5 = 20;
    # responses fill 5 of 10 allowed tokens
    assert (rates["gen"], rates["old_log_prob"], rates["update"], rates["prompt_tokens"]) == (0.1, 0.02, 0.08, 20.0)
    assert rates["eval"] == 1.0  # 20 s / (2 problems x 10 tokens)
    assert rates["response_fill"] == 0.5
    args = bench.parse_args(["--arms", "stock_grpo,recent_k", "--steps", "3", "--train-prompts", "2", "--prompts-per-step", "2",
                             "--samples", "2", "--response-length", "10", "--eval-problems", "1", "--eval-max-new-tokens", "10"])
    s = bench.settings_from_args(args, ["stock_grpo", "recent_k"])
    p = bench.plan(s, ["stock_grpo", "recent_k"], rates)
    # a row: 20 prompt + 0.5 x 10 response tokens = 25; generation at the full 10 tokens
    # per step: gen 0.1 x 4 x 10 = 4, old-lp 0.02 x 4 x 25 = 2, other 1, update 0.08 x 4 x 25 = 8
    assert p["arms"]["stock_grpo"]["step_s"] == pytest.approx(15.0)
    # stock: 30 start-up + 3 x 15 + eval 1 x 1 x 10
    assert p["arms"]["stock_grpo"]["seconds"] == pytest.approx(30 + 45 + 10)
    # recent_k replays in steps 2 and 3 (one epoch = 1 step): + 2 x 8
    assert p["arms"]["recent_k"]["replay_steps"] == 2 and p["arms"]["recent_k"]["seconds"] == pytest.approx(85 + 16)


def test_paper_question_preset_and_arm_overrides(bench, tmp_path):
    args = bench.parse_args(["--preset", "paper-question", "--steps", "9"])
    s = bench.settings_from_args(args, bench.parse_arms(args.arms))
    assert (s.samples, s.prompts_per_step, s.model, s.eval_problems, s.steps) == (8, 4, "smollm2", 128, 9)  # flag wins
    assert s.steps_of("stock_grpo") == 25 and s.steps_of("recent_k_skip") == 9 and s.eval_base
    # trained on 2-term sums (mixed rewards for SmolLM2); the default stays the 2-3 term source
    assert s.train_source == "arithmetic_2terms" and bench.parse_args([]).train_source == "arithmetic"
    assert args.arms == "recent_k_skip,stock_grpo"
    setup = bench.Setup(tmp_path / "m", tmp_path / "t.parquet", "pkg://r", 256)
    repo = bench.arm_overrides(s, setup, "recent_k_skip", tmp_path / "run", save=True)
    assert "algorithm.repo.skip_zero_advantage_rows=true" in repo and "algorithm.repo.num_replays=8" in repo
    assert "algorithm.repo.min_cache_to_replay=8" in repo and "actor_rollout_ref.rollout.seed=0" in repo
    # every core for verl's workers unless --threads says otherwise (Ray would give each worker 1)
    assert f"actor_rollout_ref.rollout.engine_kwargs.hf_cpu.num_threads={os.cpu_count()}" in repo
    three = bench.settings_from_args(bench.parse_args(["--preset", "paper-question", "--threads", "3"]))
    assert "actor_rollout_ref.rollout.engine_kwargs.hf_cpu.num_threads=3" in bench.arm_overrides(three, setup, "stock_grpo", tmp_path, save=False)
    stock = bench.arm_overrides(s, setup, "stock_grpo", tmp_path / "run", save=True)
    assert stock[:3] == ["--config-name=repo_trainer", "+preset=cpu", "algorithm=grpo"]
    assert not any(o.startswith("algorithm.repo.") for o in stock)
    assert f"trainer.rollout_data_dir={tmp_path / 'run' / 'rollouts'}" in stock and "trainer.total_training_steps=25" in stock
    with pytest.raises(SystemExit, match="--arm-steps"):
        bench.parse_arm_steps("fifo=3", ["grpo"])


def test_grpo_skip_arm_and_accuracy_curve_checkpoints(bench, tmp_path):
    # GRPO with RePO's exact skipping: no replay (strategy none), skipping forced on
    args = bench.parse_args(["--arms", "grpo_skip,recent_k_skip", "--steps", "10", "--eval-every", "4", "--eval-temperature", "0"])
    s = bench.settings_from_args(args, bench.parse_arms(args.arms))
    setup = bench.Setup(tmp_path / "m", tmp_path / "t.parquet", "pkg://r", 64)
    skip = bench.arm_overrides(s, setup, "grpo_skip", tmp_path / "run", save=True)
    assert "algorithm.repo.strategy=none" in skip and "algorithm.repo.skip_zero_advantage_rows=true" in skip
    # checkpoints every 4 steps (verl also saves the last): evaluated at 4, 8 and 10
    assert "trainer.save_freq=4" in skip and bench.eval_steps_of(s, "grpo_skip") == [4, 8, 10]
    assert s.eval_temperature == 0.0 and "grpo_skip" in bench.GRPO_ARMS
    assert bench.whole_update_skipped_steps("grpo_skip", [{"step": 3, "nonzero_adv_frac_on": 0.0},
                                                          {"step": 4, "nonzero_adv_frac_on": 0.25}]) == [3]
    # stock GRPO never skips
    assert bench.whole_update_skipped_steps("stock_grpo", [{"step": 3, "nonzero_adv_frac_on": 0.0}]) == []
    with pytest.raises(SystemExit, match="--eval-every=-1"):
        bench.settings_from_args(bench.parse_args(["--eval-every", "-1"]))


def test_alternating_segments_by_hand(bench):
    args = bench.parse_args(["--arms", "grpo_skip,recent_k_skip,stock_grpo", "--steps", "6", "--alternate-every", "4"])
    s = bench.settings_from_args(args, bench.parse_arms(args.arms))
    # blocks 1-4 then 5-6; the arms' order rotates by one each block
    assert bench.segments_of(s, ["grpo_skip", "recent_k_skip", "stock_grpo"]) == [
        ("grpo_skip", 1, 4), ("recent_k_skip", 1, 4), ("stock_grpo", 1, 4),
        ("recent_k_skip", 5, 6), ("stock_grpo", 5, 6), ("grpo_skip", 5, 6),
    ]
    setup = bench.Setup(Path("/m"), Path("/t.parquet"), "pkg://r", 64)
    first = bench.arm_overrides(s, setup, "recent_k_skip", Path("/run"), save=False, until_step=4)
    assert "trainer.total_training_steps=4" in first and "trainer.resume_mode=auto" in first and "trainer.save_freq=4" in first
    assert "trainer.max_actor_ckpt_to_keep=2" in first
    # one arm after the other without it
    plain = bench.settings_from_args(bench.parse_args(["--arms", "grpo,recent_k", "--steps", "3"]), ["grpo", "recent_k"])
    assert bench.segments_of(plain, ["grpo", "recent_k"]) == [("grpo", 1, 3), ("recent_k", 1, 3)]
    with pytest.raises(SystemExit, match="--eval-every=6 a multiple"):
        bench.settings_from_args(bench.parse_args(["--alternate-every", "4", "--eval-every", "6"]))
