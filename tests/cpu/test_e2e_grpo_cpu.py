"""Stock ``python -m verl.trainer.main_ppo +preset=cpu``: plain GRPO, default V1 trainer, 2 steps
on the tiny model, with and without a reference model (KL loss).

Checked from the run's log:
- both training steps complete, the actor gets a non-zero gradient and the reward function ran;
- the rollout's per-token log-probs equal the actor's recomputation: verl itself compares them
  (``training/rollout_probs_diff_max``: max |p_rollout - p_actor| over response tokens) and we
  require < 1e-4 (fp32 on both sides; observed ~1e-9);
- the rollout's weights follow the actor: the first sync equals the model on disk (checksum
  computed here) and the sync after step 1 changes them. Step 2's log-prob match then also shows
  the rollout generated with the updated weights (stale weights would differ by the update).
"""

import re

import pytest

from repo_ext.cpu.tiny_run import run_main_ppo, tiny_grpo_overrides, write_arithmetic_parquet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(330)]

PROB_TOL = 1e-4
RUN_TIMEOUT_S = 300

_STEP = re.compile(r"step:(\d+) - (.*)")
_SYNC = re.compile(r"\[hf_cpu\] replica 0: loaded (\d+) tensors for global_steps=(\d+), weights checksum ([-+0-9.eE]+)")


def _metrics_by_step(log: str) -> dict[int, dict[str, float]]:
    steps = {}
    for step, body in _STEP.findall(log):
        metrics = {}
        for item in body.split(" - "):
            key, _, value = item.rpartition(":")
            number = re.search(r"[-+0-9.eE]+(?=\)?$)", value.strip())
            if key and number:
                metrics[key.strip()] = float(number.group(0))
        steps[int(step)] = metrics
    return steps


def _checksum(model) -> float:
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


# Only the run with a reference model and the KL loss (the superset): stock GRPO without a reference
# model runs in the benchmark smoke test (tests/benchmarks, arm stock_grpo) and in
# tests/integration/test_e2e_zero_adv_skip.py's rollout dumps; one run fewer keeps make test short.
@pytest.mark.parametrize("use_kl_loss", [True], ids=["ref_kl_loss"])
def test_grpo_two_steps_on_cpu(tmp_path, tiny_model_path, tiny_model, use_kl_loss):
    train = write_arithmetic_parquet(tmp_path / "train.parquet", num_prompts=8)
    overrides = tiny_grpo_overrides(tiny_model_path, train, tmp_path / "out", use_kl_loss=use_kl_loss)
    result = run_main_ppo(overrides, timeout_s=RUN_TIMEOUT_S, log_path=tmp_path / "main_ppo.log")
    log = result.log()

    steps = _metrics_by_step(log)
    assert sorted(steps) == [1, 2], f"training steps logged: {sorted(steps)}; log {result.log_path}"
    for step, metrics in steps.items():
        assert metrics["training/rollout_probs_diff_max"] < PROB_TOL, (step, metrics["training/rollout_probs_diff_max"])
        assert metrics["response_length/max"] <= 16
    assert steps[1]["actor/grad_norm"] > 0
    assert steps[1]["critic/score/max"] > 0  # the custom reward function was called
    if use_kl_loss:
        assert "actor/kl_loss" in steps[2] and "timing_s/ref" in steps[2]
    else:
        assert "actor/kl_loss" not in steps[2] and "timing_s/ref" not in steps[2]

    syncs = {int(step): (int(n), float(checksum)) for n, step, checksum in _SYNC.findall(log)}
    assert sorted(syncs) == [0, 1, 2], f"rollout weight syncs logged: {sorted(syncs)}"
    assert syncs[0][0] == len(tiny_model.state_dict())
    assert syncs[0][1] == pytest.approx(_checksum(tiny_model), rel=1e-9)
    assert abs(syncs[1][1] - syncs[0][1]) > 1e-3, "rollout weights did not change after the update step"
