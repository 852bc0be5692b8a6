"""Two stock GRPO runs (``main_ppo +preset=cpu``, tiny model, one step) with the same weights and
rollout seed generate the same step-1 responses, although the second run batches its rollout
requests differently (``rollout.max_num_seqs=3`` instead of all 16 at once).

verl's own rollout dump (``trainer.rollout_data_dir``, one JSONL line per row) gives the responses.
verl 0.9.1 does not tell the rollout which of a prompt's samples a request is, so the check is per
prompt: the same responses, in whatever row order (repo_ext/cpu/hf_rollout.py, seeded sampling).
"""

import json
from collections import defaultdict

import pytest

from repo_ext.cpu.tiny_run import run_main_ppo, tiny_grpo_overrides, write_arithmetic_parquet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

RUN_TIMEOUT_S = 200


def _responses_by_prompt(dump_dir) -> dict[str, list[str]]:
    rows = [json.loads(line) for line in (dump_dir / "1.jsonl").read_text().splitlines()]
    groups = defaultdict(list)
    for row in rows:
        groups[row["input"]].append(row["output"])
    return {prompt: sorted(outputs) for prompt, outputs in groups.items()}


def test_two_runs_generate_the_same_step_1_responses(tmp_path, tiny_model_path):
    train = write_arithmetic_parquet(tmp_path / "train.parquet", num_prompts=4)
    runs = {}
    for name, extra in {"all_at_once": [], "batches_of_3": ["actor_rollout_ref.rollout.max_num_seqs=3"]}.items():
        overrides = tiny_grpo_overrides(
            tiny_model_path, train, tmp_path / name, steps=1, prompts_per_step=4, samples_per_prompt=4
        )
        overrides += ["actor_rollout_ref.rollout.temperature=1.0", f"trainer.rollout_data_dir={tmp_path / name / 'dump'}"]
        run_main_ppo(overrides + extra, timeout_s=RUN_TIMEOUT_S, log_path=tmp_path / f"{name}.log")
        runs[name] = _responses_by_prompt(tmp_path / name / "dump")

    first, second = runs["all_at_once"], runs["batches_of_3"]
    assert len(first) == 4 and all(len(outputs) == 4 for outputs in first.values())
    assert any(len(set(outputs)) > 1 for outputs in first.values()), "samples of a prompt should differ"
    assert first == second
