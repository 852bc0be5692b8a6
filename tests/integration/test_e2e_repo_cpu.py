"""RePO inside verl's trainer, end to end on CPU with the tiny model (stock ``main_ppo``).

One 3-step RePO run (4 prompts x 2 samples, every prompt visited every step, gate
min_cache_to_replay=2 so replay starts at step 2), then a resume from its step-3 checkpoint for a
4th step, then a 2-step ``strategy=none`` run compared with verl's own GRPO maths. The trainer's
debugging dump (REPO_EXT_DUMP_DIR) gives each step's rows as the actor saw them; everything the
tests expect is recomputed here from earlier steps' dumps or with verl's functions.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from repo_ext.algorithm.store import ReplayStore
from repo_ext.cpu.tiny_run import run_main_ppo, tiny_grpo_overrides, write_arithmetic_parquet
from repo_ext.integration.store_checkpoint import load_store_state

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

RUN_TIMEOUT_S = 360
EPS = 1e-6


def _overrides(model, train, out, steps, strategy="recent_k", extra=()):
    ov = tiny_grpo_overrides(model, train, out, steps=steps, prompts_per_step=4, samples_per_prompt=2)
    ov = [o for o in ov if not o.startswith(("algorithm.adv_estimator", "trainer.save_freq"))]
    ov += [
        "algorithm=repo",
        f"algorithm.repo.strategy={strategy}",
        "algorithm.repo.num_replays=2",
        "algorithm.repo.min_cache_to_replay=2",
        "algorithm.repo.max_cache_size=4",
        "trainer.logger=[console,file]",
        # the loss metrics checked here cover every row; with zero-advantage rows skipped (issue #14,
        # zero_adv_skip) they cover the rows that went through the update
        "algorithm.repo.skip_zero_advantage_rows=false",
        *extra,
    ]
    return ov


def _run(tmp: Path, name: str, overrides, dump: Path):
    metrics_path = tmp / f"{name}.jsonl"
    env = {"REPO_EXT_DUMP_DIR": str(dump), "VERL_FILE_LOGGER_PATH": str(metrics_path)}
    run_main_ppo(overrides, timeout_s=RUN_TIMEOUT_S, log_path=tmp / f"{name}.log", env=env)
    return {rec["step"]: rec["data"] for rec in map(json.loads, metrics_path.read_text().splitlines())}


def _load(dump: Path, step: int) -> dict:
    return torch.load(dump / f"step_{step}.pt", weights_only=False)


@pytest.fixture(scope="module")
def repo_runs(tmp_path_factory):
    from repo_ext.assets.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("repo_e2e")
    model = build_tiny_model(tmp / "tiny", seed=0)
    train = write_arithmetic_parquet(tmp / "train.parquet", num_prompts=4)
    dump = tmp / "dump"
    # keep one checkpoint per process, remote copies asked for: the store must follow verl's actor folders
    ckpt = ["trainer.save_freq=2", "trainer.max_actor_ckpt_to_keep=1", f"trainer.default_hdfs_dir={tmp / 'remote'}"]
    first = _run(tmp, "first", _overrides(model, train, tmp / "out", 3, extra=ckpt), dump)
    resumed = _run(tmp, "resumed", _overrides(model, train, tmp / "out", 4, extra=ckpt), dump)
    return {"tmp": tmp, "dump": dump, "first": first, "resumed": resumed, "model": model, "train": train}


def test_replay_starts_and_metrics_are_logged(repo_runs):
    m = repo_runs["first"]
    assert sorted(m) == [1, 2, 3]
    assert m[1]["repo/replayed_rows"] == 0  # nothing stored before step 1
    for step in (2, 3):
        assert m[step]["repo/replayed_rows"] == 8  # 4 prompts x num_replays 2
        assert m[step]["repo/prompts_with_replay"] == 4
        assert m[step]["repo/staleness_mean"] >= 1 and m[step]["repo/staleness_max"] >= 1
    for key in (
        "repo/nonzero_adv_group_frac_on", "repo/nonzero_adv_group_frac_off", "repo/nonzero_adv_group_frac_all",
        "actor/repo/off_ratio_mean", "actor/repo/off_ratio_max", "actor/repo/on_clipfrac", "actor/repo/off_clipfrac",
        "repo/store_num_prompts", "repo/store_nbytes", "repo/store_num_evictions", "timing_s/repo_store",
    ):
        assert key in m[3], key
    assert "repo/nonzero_adv_group_frac_off" not in m[1]  # no replayed group at step 1
    assert m[3]["repo/store_num_prompts"] == 4
    # 3 steps x 8 rows inserted, capacity 4 per prompt: 8 evictions by step 3
    assert m[3]["repo/store_num_evictions"] == 8 and m[3]["repo/store_num_entries"] == 16
    assert m[2]["actor/repo/off_ratio_mean"] > 0


def test_replayed_old_log_probs_are_the_stored_ones_bit_for_bit(repo_runs):
    dump = repo_runs["dump"]
    # what was inserted: every on-policy row of steps 1 and 2 with the engine's old log-probs
    inserted = {}
    for step in (1, 2):
        rows = _load(dump, step)
        for i, off in enumerate(rows["off_policy"]):
            if not off:
                inserted[(rows["prompt_key"][i], tuple(rows["responses"][i].tolist()))] = rows["old_log_probs"][i]
    for step in (2, 3):
        rows = _load(dump, step)
        n_off = 0
        for i, off in enumerate(rows["off_policy"]):
            if off:
                n_off += 1
                key = (rows["prompt_key"][i], tuple(rows["responses"][i].tolist()))
                assert key in inserted, "a replayed response that was never generated for this prompt"
                stored = inserted[key]
                assert rows["old_log_probs"][i].numpy().tobytes() == stored.numpy().tobytes()
                assert rows["uid"][i].endswith("::repo_replay")
        assert n_off == 8
    # recent_k with k=2 from a 4-entry buffer at step 3 takes step 2's responses
    rows3 = _load(dump, 3)
    rows2 = _load(dump, 2)
    step2_on = {tuple(rows2["responses"][i].tolist()) for i, off in enumerate(rows2["off_policy"]) if not off}
    for i, off in enumerate(rows3["off_policy"]):
        if off:
            assert tuple(rows3["responses"][i].tolist()) in step2_on


def test_advantages_are_normalised_in_their_own_groups(repo_runs):
    rows = _load(repo_runs["dump"], 3)
    scores = [float(s.sum()) for s in rows["rm_scores"]]
    groups = defaultdict(list)
    for i, uid in enumerate(rows["uid"]):
        groups[uid].append(i)  # on-policy rows: plain uid; replayed rows: uid + suffix
    assert len(groups) == 8  # 4 prompts x {on, off}
    for members in groups.values():
        vals = [scores[i] for i in members]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        for i in members:
            adv = rows["advantages"][i]
            expected = (scores[i] - mean) / (std + EPS)
            assert torch.allclose(adv, torch.full_like(adv, expected), atol=1e-5), (adv, expected)


def test_resume_restores_the_store_exactly_and_training_continues(repo_runs):
    dump, tmp = repo_runs["dump"], repo_runs["tmp"]
    restored = torch.load(dump / "restored_store_step_3.pt", weights_only=False)
    a = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    b = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    load_store_state(a, tmp / "out" / "checkpoints" / "global_step_3", expected_step=3)
    b.load_state_dict(restored)
    assert a.stats() == b.stats() and a.num_entries == 16
    for key in {k for k in _load(dump, 3)["prompt_key"] if k}:
        ea, eb = a.entries(key), b.entries(key)
        assert [(e.response_ids.tobytes(), e.behaviour_log_probs.tobytes(), e.reward, e.step) for e in ea] == [
            (e.response_ids.tobytes(), e.behaviour_log_probs.tobytes(), e.reward, e.step) for e in eb
        ]
    resumed = repo_runs["resumed"]
    assert sorted(resumed) == [4]
    # replay at the first resumed step is only possible with the restored store
    assert resumed[4]["repo/replayed_rows"] == 8
    assert resumed[4]["repo/store_num_inserted"] == 32


def test_old_checkpoints_are_pruned_with_the_actor(repo_runs):
    """verl (FSDP) deletes old ``actor/`` folders, per process, keeping max_actor_ckpt_to_keep=1, and
    copies nothing to default_hdfs_dir; the store files go exactly with the actor folders."""
    ckpt, remote = repo_runs["tmp"] / "out" / "checkpoints", repo_runs["tmp"] / "remote"
    actors = sorted(p.parent.name for p in ckpt.glob("global_step_*/actor"))
    stores = sorted(p.parent.parent.name for p in ckpt.rglob("repo_store.pt"))
    # the first run saved steps 2 and 3 (pruning 2); the resumed run saved step 4 (its only save)
    assert actors == stores == ["global_step_3", "global_step_4"]
    assert sorted(p.name for p in ckpt.glob("global_step_*")) == ["global_step_2", "global_step_3", "global_step_4"]
    assert not list(remote.rglob("*.pt")) and not list(remote.rglob("repo_store*"))


def test_strategy_none_is_grpo(tmp_path, repo_runs):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, compute_policy_loss_vanilla
    from verl.workers.config import ActorConfig

    dump = tmp_path / "dump"
    m = _run(tmp_path, "none", _overrides(repo_runs["model"], repo_runs["train"], tmp_path / "out", 2, strategy="none",
                                         extra=["trainer.save_freq=-1"]), dump)
    assert [m[s]["repo/replayed_rows"] for s in (1, 2)] == [0, 0]
    assert m[2]["repo/store_num_entries"] == 0
    rows = _load(dump, 1)
    assert not any(rows["off_policy"])
    length = max(len(r) for r in rows["responses"])
    n = len(rows["responses"])
    rewards, mask, old = torch.zeros(n, length), torch.zeros(n, length), torch.zeros(n, length)
    ours = torch.zeros(n, length)
    for i in range(n):
        L = len(rows["responses"][i])
        rewards[i, :L], mask[i, :L] = rows["rm_scores"][i], 1
        old[i, :L], ours[i, :L] = rows["old_log_probs"][i], rows["advantages"][i]
    uids = np.array(rows["uid"], dtype=object)
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask, uids, epsilon=1e-6, norm_adv_by_std_in_grpo=True)
    torch.testing.assert_close(ours, grpo, rtol=0, atol=1e-6)
    # step 1 is one mini-batch and one epoch: the policy is the old policy, ratio 1
    cfg = ActorConfig(strategy="fsdp2", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=8, clip_ratio=0.2,
                      rollout_n=2, loss_agg_mode="token-mean")
    loss, _ = compute_policy_loss_vanilla(old, old, grpo, mask.bool(), "token-mean", cfg)
    assert m[1]["actor/pg_loss"] == pytest.approx(loss.item(), abs=1e-5)
