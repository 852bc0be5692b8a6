"""RePO with verl's rollout-correction bypass mode, end to end on CPU with the tiny model.

Issue #23, finding 1: with ``algorithm.rollout_correction.bypass_mode=true`` and a replay step
whose on-policy (+ padding) rows are not a multiple of the old-log-prob micro-batch, the trainer
fell back to verl's pass over all rows, which in bypass mode computes no ``entropy``, and the
first replay step raised ``KeyError: 'key "entropy" not found'``. The reproduction: 4 prompts x 3
samples, ``num_replays=2``, micro-batch 3 (12 on-policy + 8 replayed rows, padded to 21).

By hand::

    flock /tmp/repo_e2e.lock .venv/bin/python -m pytest -q -p no:xdist tests/integration/test_e2e_bypass_replay.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repo_ext.cpu.tiny_run import run_main_ppo, tiny_grpo_overrides, write_arithmetic_parquet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

STEPS = 3
PROMPTS, SAMPLES, REPLAYS = 4, 3, 2


@pytest.fixture(scope="module")
def bypass_run(tmp_path_factory):
    from repo_ext.assets.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("bypass")
    model = build_tiny_model(tmp / "tiny", seed=0)
    train = write_arithmetic_parquet(tmp / "train.parquet", num_prompts=PROMPTS)
    ov = tiny_grpo_overrides(model, train, tmp / "out", steps=STEPS, prompts_per_step=PROMPTS, samples_per_prompt=SAMPLES)
    ov = [o for o in ov if not o.startswith(("algorithm.adv_estimator", "actor_rollout_ref.actor.ppo_micro_batch_size",
                                             "actor_rollout_ref.rollout.log_prob_micro_batch_size"))]
    ov += [
        "algorithm=repo",
        f"algorithm.repo.num_replays={REPLAYS}",
        "algorithm.repo.min_cache_to_replay=2",  # step 1 stores 3 responses per prompt: replay from step 2
        "algorithm.repo.max_cache_size=6",
        "algorithm.rollout_correction.bypass_mode=true",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=3",
        "trainer.logger=[console,file]",
    ]
    dump, metrics_path = tmp / "dump", tmp / "metrics.jsonl"
    env = {"REPO_EXT_DUMP_DIR": str(dump), "VERL_FILE_LOGGER_PATH": str(metrics_path)}
    run_main_ppo(ov, timeout_s=420, log_path=tmp / "bypass.log", env=env)
    metrics = {rec["step"]: rec["data"] for rec in map(json.loads, metrics_path.read_text().splitlines())}
    return {"metrics": metrics, "dump": dump}


def _rows(dump: Path, step: int) -> dict:
    return torch.load(dump / f"step_{step}.pt", weights_only=False)


def test_trains_through_its_replay_steps(bypass_run):
    m = bypass_run["metrics"]
    assert sorted(m) == list(range(1, STEPS + 1))
    assert m[1]["repo/replayed_rows"] == 0
    for step in range(2, STEPS + 1):
        assert m[step]["repo/replayed_rows"] == PROMPTS * REPLAYS
        assert m[step]["repo/on_policy_rows"] == PROMPTS * SAMPLES
        assert "actor/pg_loss" in m[step]


def test_no_old_log_prob_forward_in_bypass_mode(bypass_run):
    # verl reports actor/entropy from the old-log-prob forward pass only (entropy_coeff is 0 here,
    # so the update computes none): in bypass mode no step may run that pass, replay step or not
    for step, data in bypass_run["metrics"].items():
        assert "actor/entropy" not in data, step


def test_replayed_rows_keep_their_stored_log_probs(bypass_run):
    dump = bypass_run["dump"]
    inserted: dict[tuple, set[bytes]] = {}  # (prompt, response) -> old log-probs it was stored with, earlier steps
    for step in range(1, STEPS + 1):
        rows = _rows(dump, step)
        keys = [(rows["prompt_key"][i], tuple(rows["responses"][i].tolist())) for i in range(len(rows["keys"]))]
        replayed = [i for i, off in enumerate(rows["off_policy"]) if off]
        assert len(replayed) == (0 if step == 1 else PROMPTS * REPLAYS)
        for i in replayed:
            assert keys[i] in inserted, "a replayed response that was never generated for this prompt"
            assert rows["old_log_probs"][i].numpy().tobytes() in inserted[keys[i]]
        for i, off in enumerate(rows["off_policy"]):
            if not off:
                inserted.setdefault(keys[i], set()).add(rows["old_log_probs"][i].numpy().tobytes())
