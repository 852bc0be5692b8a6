"""A warm start from a GRPO checkpoint, end to end on CPU: a stock verl GRPO run saves step 1; RePO
resumes it with ``algorithm.repo.missing_store_on_resume=empty``.

4 prompts, batch 4 (one step per epoch), n=2, min_cache_to_replay=2: the store, empty after step 1,
holds 2 entries per prompt after step 2, so replay can first happen at step 1 + 1 * 1 + 1 = 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repo_ext.cpu.tiny_run import run_main_ppo, tiny_grpo_overrides, write_arithmetic_parquet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

RUN_TIMEOUT_S = 360


def _run(tmp: Path, name: str, overrides) -> tuple[dict[int, dict], str]:
    metrics_path = tmp / f"{name}.jsonl"
    result = run_main_ppo(overrides, timeout_s=RUN_TIMEOUT_S, log_path=tmp / f"{name}.log",
                          env={"VERL_FILE_LOGGER_PATH": str(metrics_path)})
    metrics = {rec["step"]: rec["data"] for rec in map(json.loads, metrics_path.read_text().splitlines())}
    return metrics, result.log()


def test_repo_resumes_a_grpo_checkpoint_with_an_empty_store(tmp_path):
    from repo_ext.assets.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=0)
    train = write_arithmetic_parquet(tmp_path / "train.parquet", num_prompts=4)
    grpo = tiny_grpo_overrides(model, train, tmp_path / "out", steps=1, prompts_per_step=4, samples_per_prompt=2)
    grpo = [o for o in grpo if not o.startswith("trainer.save_freq")] + ["trainer.save_freq=1",
                                                                        "trainer.logger=[console,file]"]
    _run(tmp_path, "grpo", grpo)
    ckpt = tmp_path / "out" / "checkpoints"
    assert (ckpt / "global_step_1" / "actor").is_dir() and not list(ckpt.rglob("repo_store.pt"))

    repo = [o for o in grpo if not o.startswith(("algorithm.adv_estimator", "trainer.total_training_steps"))] + [
        "algorithm=repo", "algorithm.repo.num_replays=2", "algorithm.repo.min_cache_to_replay=2",
        "algorithm.repo.max_cache_size=4", "algorithm.repo.missing_store_on_resume=empty",
        "trainer.total_training_steps=3",
    ]
    metrics, log = _run(tmp_path, "repo", repo)
    assert "a warm start with an EMPTY store" in log
    assert "RePO: replay can first happen at step 3 of 3 after the warm start at step 1" in log
    assert sorted(metrics) == [2, 3]  # verl resumed the step counter from the GRPO checkpoint
    assert metrics[2]["repo/store_start_step"] == 1.0 and metrics[3]["repo/store_start_step"] == 1.0
    assert metrics[2]["repo/replayed_rows"] == 0.0  # the empty store: nothing to replay at step 2
    assert metrics[3]["repo/replayed_rows"] == 8.0  # 4 prompts x num_replays 2, from step 2's entries
    assert metrics[3]["repo/replay_stalled"] == 0.0
    assert (ckpt / "global_step_3" / "actor" / "repo_store.pt").exists()
