"""The RePO policy loss against the formula written out, its gradient, and verl's vanilla loss."""

from __future__ import annotations

import math

import pytest
import torch

from repo_ext.algorithm.loss import LOSS_AGG_MODES, MAX_METRICS, SUM_KEYS, mean_metrics_from_sums, repo_policy_loss

CLIP_LOW, CLIP_HIGH, CLIP_C = 0.2, 0.28, 3.0


# ---------------------------------------------------------------- the formula, written out in plain Python


def token_loss(lp: float, old: float, adv: float) -> float:
    ratio = math.exp(max(-20.0, min(20.0, lp - old)))
    loss = max(-adv * ratio, -adv * min(max(ratio, 1 - CLIP_LOW), 1 + CLIP_HIGH))
    if adv < 0:
        loss = min(loss, -adv * CLIP_C)
    return loss


def aggregate(rows: list[list[float]], mode: str, horizon: int, *, rows_norm=None, tokens_norm=None, dp=1):
    """rows: each row's losses on its valid tokens."""
    nonempty = [r for r in rows if r]
    if mode == "token-mean":
        return sum(sum(r) for r in rows) / (tokens_norm or sum(len(r) for r in rows)) * dp
    if mode == "token-sum":
        return sum(sum(r) for r in rows) * dp
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in nonempty) / (rows_norm or len(nonempty)) * dp
    total = sum(sum(r) for r in nonempty) / (rows_norm or len(nonempty)) * dp
    return total / horizon if mode == "seq-mean-token-sum-norm" else total


def expected_loss(batch, mode, weighting, coef, *, dp=1, gbs=None, ntok=None, on_rows=None, off_rows=None,
                  on_tok=None, off_tok=None):
    lp, old, adv, mask, off = (batch[k].tolist() for k in ("lp", "old", "adv", "mask", "off"))
    horizon = len(lp[0])
    per_row = [
        [token_loss(lp[b][t], old[b][t], adv[b][t]) for t in range(horizon) if mask[b][t]] for b in range(len(lp))
    ]
    if weighting == "reference":
        weighted = [[coef * x for x in row] if off[b] else row for b, row in enumerate(per_row)]
        return aggregate(weighted, mode, horizon, rows_norm=gbs, tokens_norm=ntok, dp=dp)
    on = [row for b, row in enumerate(per_row) if not off[b]]
    offs = [row for b, row in enumerate(per_row) if off[b]]
    on_term = aggregate(on, mode, horizon, rows_norm=on_rows, tokens_norm=on_tok, dp=dp) if any(on) else 0.0
    off_term = aggregate(offs, mode, horizon, rows_norm=off_rows, tokens_norm=off_tok, dp=dp) if any(offs) else 0.0
    return on_term + coef * off_term


def make_batch(seed: int, batch: int = 7, horizon: int = 6, dtype=torch.float64, off_rows=(4, 5, 6)):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, horizon, generator=gen, dtype=dtype) * 3
    lp = old + 0.6 * torch.randn(batch, horizon, generator=gen, dtype=dtype)  # many ratios outside the clip
    lp[0, 0] = old[0, 0] + 1.5  # ratio e^1.5 > clip_ratio_c: dual clip when A < 0
    adv_rows = torch.randn(batch, generator=gen, dtype=dtype)
    adv_rows[1] = -abs(adv_rows[1])
    adv_rows[0] = -1.0
    lengths = torch.randint(1, horizon + 1, (batch,), generator=gen)
    lengths[2] = 0  # a fully masked row: excluded from the seq-mean
    mask = torch.arange(horizon)[None, :] < lengths[:, None]
    off = torch.zeros(batch, dtype=torch.bool)
    off[list(off_rows)] = True
    return {"lp": lp, "old": old, "adv": adv_rows[:, None] * mask, "mask": mask, "off": off}


def run(batch, **kwargs):
    return repo_policy_loss(
        batch["lp"], batch["old"], batch["adv"], batch["mask"], batch["off"],
        clip_ratio_low=CLIP_LOW, clip_ratio_high=CLIP_HIGH, clip_ratio_c=CLIP_C, **kwargs,
    )


@pytest.mark.parametrize("coef", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("weighting", ["reference", "paper"])
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_loss_equals_the_formula(mode, weighting, coef):
    for seed in range(3):
        batch = make_batch(seed)
        loss, _ = run(batch, weighting=weighting, off_policy_loss_coef=coef, loss_agg_mode=mode)
        assert loss.item() == pytest.approx(expected_loss(batch, mode, weighting, coef), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_loss_with_global_normalisers_equals_the_formula(mode):
    batch = make_batch(11)
    ref, _ = run(batch, weighting="reference", off_policy_loss_coef=0.7, loss_agg_mode=mode,
                 dp_size=2, global_batch_size=13, batch_num_tokens=41)
    assert ref.item() == pytest.approx(expected_loss(batch, mode, "reference", 0.7, dp=2, gbs=13, ntok=41), rel=1e-12)
    counts = {"on_rows": 6, "off_rows": 5, "on_tok": 29, "off_tok": 23}
    paper, _ = run(batch, weighting="paper", off_policy_loss_coef=0.7, loss_agg_mode=mode, dp_size=2,
                   num_on_rows=6, num_off_rows=5, num_on_tokens=29, num_off_tokens=23)
    assert paper.item() == pytest.approx(expected_loss(batch, mode, "paper", 0.7, dp=2, **counts), rel=1e-12)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_paper_weighting_with_one_side_empty(mode):
    only_off = make_batch(5, off_rows=range(7))
    loss, metrics = run(only_off, weighting="paper", off_policy_loss_coef=0.5, loss_agg_mode=mode)
    assert loss.item() == pytest.approx(expected_loss(only_off, mode, "paper", 0.5), rel=1e-12)
    # every micro-batch reports every key (verl's dp aggregation needs equal counts per rank) ...
    assert set(SUM_KEYS) | set(MAX_METRICS) <= set(metrics)
    assert metrics["repo/sum/on_tokens"] == 0 and metrics["repo/sum/on_loss_units"] == 0
    # ... and a side without tokens has no mean (the mean of nothing is not 0)
    means = mean_metrics_from_sums(dict(metrics))
    assert "repo/on_policy_loss" not in means and "repo/on_clipfrac" not in means and "repo/off_clipfrac" in means
    only_on = make_batch(5, off_rows=())
    loss, on_metrics = run(only_on, weighting="paper", off_policy_loss_coef=0.5, loss_agg_mode=mode)
    assert loss.item() == pytest.approx(expected_loss(only_on, mode, "paper", 0.5), rel=1e-12)
    assert set(on_metrics) == set(metrics)
    means = mean_metrics_from_sums(dict(on_metrics))
    assert not any(key.startswith("repo/off_") and key != "repo/off_row_frac" for key in means)
    assert not any(key.startswith("repo/sum/") for key in means)


# ---------------------------------------------------------------- gradient and metrics on a hand example


def hand_batch():
    # row 0: on-policy, ratio 1 on 4 tokens, A = +2
    # row 1: off-policy with stored behaviour log-probs; ratios 1.5 (A=+1, clipped at 1.2),
    #        1.1 (A=+1, inside the clip), 4.0 (A=-1, dual clip at 3), 0.5 (A=-1, clipped at 0.8)
    behaviour = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64)
    ratios = torch.tensor([1.5, 1.1, 4.0, 0.5], dtype=torch.float64)
    old = torch.stack([torch.full((4,), -1.3, dtype=torch.float64), behaviour]).requires_grad_(True)
    lp = torch.stack([old[0].detach(), behaviour + ratios.log()]).requires_grad_(True)
    adv = torch.tensor([[2.0] * 4, [1.0, 1.0, -1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 4, dtype=torch.bool)
    return lp, old, adv, mask, torch.tensor([False, True])


def test_gradient_zero_on_clipped_off_policy_tokens_and_analytic_elsewhere():
    lp, old, adv, mask, off = hand_batch()
    loss, _ = repo_policy_loss(lp, old, adv, mask, off, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0,
                               weighting="paper", off_policy_loss_coef=0.5, loss_agg_mode="token-mean")
    # on: mean of -2 * 1 = -2; off: mean of (-1.2, -1.1, 3, 0.8) = 0.375; total -2 + 0.5 * 0.375
    assert loss.item() == pytest.approx(-1.8125, abs=1e-12)
    loss.backward()
    # d/dlp of -A * ratio = -A * ratio, scaled by the side's weight / token count
    assert lp.grad[0].tolist() == pytest.approx([-2 / 4] * 4, abs=1e-12)
    assert lp.grad[1].tolist() == pytest.approx([0.0, 0.5 * -1.1 / 4, 0.0, 0.0], abs=1e-12)
    assert old.grad is None and adv.grad is None  # stored log-probs and advantages are constants


def test_gradient_reference_weighting():
    lp, old, adv, mask, off = hand_batch()
    loss, _ = repo_policy_loss(lp, old, adv, mask, off, weighting="reference", off_policy_loss_coef=0.5,
                               loss_agg_mode="token-mean")
    assert loss.item() == pytest.approx((-8 + 0.5 * 1.5) / 8, abs=1e-12)  # one mean over all 8 tokens
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-2 / 8] * 4, abs=1e-12)
    assert lp.grad[1].tolist() == pytest.approx([0.0, 0.5 * -1.1 / 8, 0.0, 0.0], abs=1e-12)


def test_metrics_by_hand():
    lp, old, adv, mask, off = hand_batch()
    _, metrics = repo_policy_loss(lp, old, adv, mask, off, weighting="paper", loss_agg_mode="token-mean")
    metrics = mean_metrics_from_sums(metrics)
    expected = {
        "repo/on_policy_loss": -2.0,
        "repo/off_policy_loss": 0.375,
        "repo/on_clipfrac": 0.0,
        "repo/off_clipfrac": 0.5,  # ratios 1.5 (A>0) and 0.5 (A<0) hit the clip
        "repo/off_ratio_mean": (1.5 + 1.1 + 4.0 + 0.5) / 4,
        "repo/off_ratio_max": 4.0,
        "repo/nonzero_adv_row_frac": 1.0,
        "repo/off_row_frac": 0.5,
        "actor/pg_clipfrac": 2 / 8,
        "actor/ppo_kl": -(math.log(1.5) + math.log(1.1) + math.log(4.0) + math.log(0.5)) / 8,
        "actor/pg_clipfrac_lower": 1 / 8,  # ratio 4 with A<0 beyond clip_ratio_c
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-7), key
        assert isinstance(metrics[key], float)


def test_nonzero_adv_row_frac_ignores_fully_masked_rows():
    lp = torch.zeros(4, 3)
    adv = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    off = torch.tensor([False, False, True, True])
    _, metrics = repo_policy_loss(lp, lp, adv, mask, off)
    metrics = mean_metrics_from_sums(metrics)
    # valid rows 0, 1, 2; row 2's non-zero advantage is on a masked token
    assert metrics["repo/nonzero_adv_row_frac"] == pytest.approx(1 / 3)
    assert metrics["repo/off_row_frac"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- equality with verl without replayed rows


def verl_vanilla(batch, mode, global_batch_info=None):
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
    from verl.workers.config.actor import ActorConfig

    config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio_low=CLIP_LOW,
                         clip_ratio_high=CLIP_HIGH, clip_ratio_c=CLIP_C, loss_agg_mode=mode)
    config.global_batch_info.update(global_batch_info or {})
    return compute_policy_loss_vanilla(batch["old"], batch["lp"], batch["adv"], batch["mask"], loss_agg_mode=mode,
                                       config=config)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("weighting", ["reference", "paper"])
def test_equals_verl_vanilla_without_off_policy_rows(mode, weighting):
    for seed in range(3):
        batch = make_batch(seed, dtype=torch.float32, off_rows=())
        expected_loss_value, expected_metrics = verl_vanilla(batch, mode)
        loss, metrics = run(batch, weighting=weighting, loss_agg_mode=mode, off_policy_loss_coef=0.3)
        assert torch.equal(loss, expected_loss_value)
        for key, value in expected_metrics.items():
            assert metrics[key] == value, key


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_equals_verl_vanilla_with_global_batch_info(mode):
    batch = make_batch(3, dtype=torch.float32, off_rows=())
    info = {"dp_size": 2, "batch_num_tokens": 51, "global_batch_size": 14, "loss_scale_factor": 8}
    expected, _ = verl_vanilla(batch, mode, info)
    loss, _ = run(batch, loss_agg_mode=mode, dp_size=2, batch_num_tokens=51, global_batch_size=14, loss_scale_factor=8)
    assert torch.equal(loss, expected)


def test_gradient_equals_verl_vanilla_without_off_policy_rows():
    batch = make_batch(4, dtype=torch.float32, off_rows=())
    batch["lp"].requires_grad_(True)
    expected, _ = verl_vanilla(batch, "seq-mean-token-mean")
    (expected_grad,) = torch.autograd.grad(expected, batch["lp"])
    loss, _ = run(batch, loss_agg_mode="seq-mean-token-mean")
    (grad,) = torch.autograd.grad(loss, batch["lp"])
    assert torch.equal(grad, expected_grad)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weighting": "mean"}, "reference, paper"),
        ({"loss_agg_mode": "seq-sum"}, "token-mean"),
        ({"off_policy_loss_coef": -1.0}, "off_policy_loss_coef"),
        ({"clip_ratio_c": 1.0}, "clip_ratio_c"),
        ({"weighting": "paper", "dp_size": 2}, "num_on_rows"),
        ({"weighting": "paper", "loss_agg_mode": "token-mean", "dp_size": 2, "num_on_tokens": 3}, "num_off_tokens"),
        ({"weighting": "paper", "num_on_rows": 0}, "num_on_rows"),
        ({"dp_size": 2}, "global_batch_size"),
    ],
)
def test_bad_arguments(kwargs, message):
    batch = make_batch(0)
    with pytest.raises(ValueError, match=message):
        repo_policy_loss(batch["lp"], batch["old"], batch["adv"], batch["mask"], batch["off"], **kwargs)


def test_bad_shapes():
    batch = make_batch(0)
    with pytest.raises(ValueError, match="off_policy"):
        repo_policy_loss(batch["lp"], batch["old"], batch["adv"], batch["mask"], batch["off"].float())
    with pytest.raises(ValueError, match="advantages"):
        repo_policy_loss(batch["lp"], batch["old"], batch["adv"][:, :2], batch["mask"], batch["off"])
