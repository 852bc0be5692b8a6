"""Skipping zero-advantage rows end to end on CPU: the same weights as without skipping.

Two 2-step RePO runs of the tiny model (4 prompts x 3 samples) (stock ``main_ppo``, ``+preset=cpu``), identical but for
``algorithm.repo.skip_zero_advantage_rows`` (true / false): same seeds, and the same rollouts
because the ``hf_cpu`` server seeds each sample's sampling from the rollout seed, the step and the
sample's prompt. Step 2 replays (gate 2, 2 replays per prompt). The reward (response length
divisible by 3, 0 or 1) gives many all-equal groups, so both steps have zero-advantage rows.
The final actor weights must agree within the tolerance justified in ``test_zero_adv_skip``
(float summation order only).

The same step-1 responses per prompt in both runs' rollout dumps (verl's ``trainer.rollout_data_dir``)
show the seeded sampling end to end (issue #14; verl 0.9.1 does not tell the rollout which of a
prompt's samples a request is, so the check is per prompt, in whatever row order). That a row's
tokens do not depend on how requests are batched together is tested without Ray in
``tests/cpu/test_rollout_seeding.py``: with other batching the rows of a group come back in another
order, recent_k then stores and replays them in that order, and step 2 differs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from repo_ext.cpu.tiny_run import run_main_ppo, tiny_grpo_overrides, write_arithmetic_parquet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# a hang guard, not a speed target: a run takes ~60-90 s on an idle 2-core machine, and over 180 s
# (the old limit) when the machine is loaded (three runs hit it during a fresh-clone make test beside
# a benchmark, 2026-12-04)
RUN_TIMEOUT_S = 400
ATOL, RTOL = 1e-6, 1e-5
STEPS = 2
LR = 1e-3  # tiny_grpo_overrides' actor learning rate

REWARD = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return float(len(solution_str) % 3 == 0)
'''


def _run(tmp: Path, model: Path, train: Path, skip: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    name = "skip" if skip else "noskip"
    out = tmp / name
    reward = tmp / "ties_reward.py"
    overrides = tiny_grpo_overrides(model, train, out, steps=STEPS, prompts_per_step=4, samples_per_prompt=3)
    overrides = [o for o in overrides if not o.startswith(("algorithm.adv_estimator", "reward.custom_reward_function.path"))]
    overrides += [
        "algorithm=repo",
        "algorithm.repo.strategy=recent_k",
        "algorithm.repo.num_replays=2",
        "algorithm.repo.min_cache_to_replay=2",
        "algorithm.repo.max_cache_size=4",
        f"algorithm.repo.skip_zero_advantage_rows={str(skip).lower()}",
        f"reward.custom_reward_function.path={reward}",
        "actor_rollout_ref.actor.optim.weight_decay=0.01",
        # learning rate 0 in step 1 (linear warm-up over one step), full from step 2: step 1 fills the
        # store and leaves the weights as they were, so both runs generate step 2 from the same weights.
        # With an update in step 1, float noise between the runs' differently shaped batches (1e-7,
        # amplified by AdamW where a gradient is ~0) flipped 2 of 24 sampled step-2 responses when
        # the actor ran on 2 threads, and the step-2 gradients then differed by 7%.
        "actor_rollout_ref.actor.optim.lr_warmup_steps=1",
        # micro-batches of 2 rows: skipping a group of 3 leaves an odd count, padded by a 2-token row
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        f"trainer.save_freq={STEPS}",
        "trainer.logger=[console,file]",
        f"trainer.rollout_data_dir={out / 'rollouts'}",
    ]
    metrics_path = tmp / f"{name}.jsonl"
    run_main_ppo(overrides, timeout_s=RUN_TIMEOUT_S, log_path=tmp / f"{name}.log", env={"VERL_FILE_LOGGER_PATH": str(metrics_path)})
    metrics = {rec["step"]: rec["data"] for rec in map(json.loads, metrics_path.read_text().splitlines())}
    shard = out / "checkpoints" / f"global_step_{STEPS}" / "actor" / "model_world_size_1_rank_0.pt"
    state = torch.load(shard, map_location="cpu", weights_only=False)
    weights = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).float() for k, v in state.items()}
    return metrics, weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from repo_ext.assets.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("zero_adv_skip_e2e")
    (tmp / "ties_reward.py").write_text(REWARD)
    model = build_tiny_model(tmp / "tiny", seed=0)
    train = write_arithmetic_parquet(tmp / "train.parquet", num_prompts=4)
    from safetensors.torch import load_file

    return {
        "skip": _run(tmp, model, train, skip=True),
        "noskip": _run(tmp, model, train, skip=False),
        "tmp": tmp,
        "initial": {k: v.float() for k, v in load_file(str(Path(model) / "model.safetensors")).items()},
    }


def test_same_rollouts_and_rows_were_skipped(runs):
    skip, _ = runs["skip"]
    noskip, _ = runs["noskip"]
    assert sorted(skip) == sorted(noskip) == list(range(1, STEPS + 1))
    for step in skip:
        # same rollouts: the same rewards and the same replay in both runs
        for key in ("critic/score/mean", "repo/replayed_rows", "repo/nonzero_adv_group_frac_all"):
            assert skip[step][key] == pytest.approx(noskip[step][key], abs=1e-9), (step, key)
        assert "repo/skip_zero_adv_rows" not in noskip[step]
        assert skip[step]["repo/update_rows"] + skip[step]["repo/skip_zero_adv_rows"] == (
            skip[step]["repo/on_policy_rows"] + skip[step]["repo/replayed_rows"]
        )
    assert skip[STEPS]["repo/replayed_rows"] > 0
    assert sum(skip[s]["repo/skip_zero_adv_rows"] for s in skip) > 0
    assert sum(skip[s]["repo/update_rows"] for s in skip) > 0
    # the seeded rollouts of this set-up skip a group of 3 in some step: a padding row went through verl
    assert sum(skip[s]["repo/skip_padding_rows"] for s in skip) > 0


def _responses_by_prompt(dump: Path, step: int) -> dict[str, list[str]]:
    groups = defaultdict(list)
    for row in map(json.loads, (dump / f"{step}.jsonl").read_text().splitlines()):
        # replayed rows, and the no-op rows (empty prompt) that pad a replay step to a multiple of
        # dp x micro-batch, were not generated in this step
        if not row.get("repo_replayed", False) and row["input"]:
            groups[row["input"]].append(row["output"])
    return {prompt: sorted(outputs) for prompt, outputs in groups.items()}


@pytest.mark.parametrize("step", [1, 2])
def test_two_runs_generate_the_same_responses(runs, step):
    first = _responses_by_prompt(runs["tmp"] / "skip" / "rollouts", step)
    second = _responses_by_prompt(runs["tmp"] / "noskip" / "rollouts", step)
    assert len(first) == 4 and all(len(outputs) == 3 for outputs in first.values())
    assert any(len(set(outputs)) > 1 for outputs in first.values()), "samples of a prompt should differ"
    assert first == second


def test_same_gradient_norms_and_weights_with_and_without_skipping(runs):
    """The gradient is the same (the norm gradient clipping sees, per step: a wrong normaliser or a
    wrong mini-batch would scale or change it), and so are the weights after AdamW.

    Weights: float summation order changes a gradient by ~1e-7 relative, which AdamW passes on as
    ~lr * 1e-7. Every element must agree within atol 1e-6 / rtol 1e-5, without exceptions
    (measured 2026-12-04: at 8a01450 no element outside, largest difference 4.7e-8; at c4d2ec5 no
    element outside, largest 2.6e-8 against a largest training change of 1.0e-3). An element
    whose gradient sits at the float-noise level (|g| ~ AdamW's eps 1e-8) could in principle move
    by ~lr in one run and not the other; that did not happen here, and this set-up is
    deterministic, so a failure there is a real change to look at, not noise to allow.

    Scale: AdamW's first step is nearly invariant to the gradient's scale (lr * g / |g|), so the
    weights alone would not see a wrong normaliser; the grad norms above do. Beyond that, the
    largest weight difference must stay below 0.1% of the largest change training made: a
    mis-assigned row or mini-batch (an update that differs by a realistic amount) moves some
    weights by a sizeable part of lr * steps, 1000 times more.
    """
    skip, with_skip = runs["skip"]
    noskip, without = runs["noskip"]
    for step in noskip:
        assert skip[step]["actor/grad_norm"] == pytest.approx(noskip[step]["actor/grad_norm"], rel=RTOL), step
    assert with_skip.keys() == without.keys()
    moved = max(float((without[k] - v).abs().max()) for k, v in runs["initial"].items() if k in without)
    assert moved > 1e-4  # training changed the weights (so equal weights mean an equal update)
    largest = 0.0
    for name in without:
        torch.testing.assert_close(with_skip[name], without[name], atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")
        largest = max(largest, float((with_skip[name] - without[name]).abs().max()))
    assert largest <= 1e-3 * moved, f"largest weight difference {largest:.3g} vs largest training change {moved:.3g}"
