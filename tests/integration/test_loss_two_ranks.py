"""The RePO loss as verl's actor update runs it on two data-parallel ranks, simulated in one process.

Each rank's micro-batches go through the real loss path (``RePOLossFunction`` -> verl's ``ppo_loss``
-> the registered ``repo`` loss), and the metrics through verl's own aggregation: per rank
``append_to_dict`` over micro-batches (``postprocess_batch_func``), the gather over ranks
(``allgather_dict_into_dict``: a list in rank order, built here by hand because there is no second
process), ``Metric.aggregate_dp`` per mini-batch (``TrainingWorker.train_mini_batch``), verl's
``reduce_metrics`` over mini-batches, then the trainer's ``mean_metrics_from_sums``. Expected values
are computed by hand from the raw tensors (issue #13 findings 1 and 3).
"""

from __future__ import annotations

import math
from itertools import chain

import pytest
import torch

from repo_ext.algorithm.config import RePOConfig
from repo_ext.algorithm.loss import mean_metrics_from_sums
from repo_ext.integration.estimators import RePOLossFunction
from repo_ext.integration.mini_batch_counts import MINI_BATCH_FIELD, NORM_ROWS_FIELD, mini_batch_row_counts
from repo_ext.integration.replay_rows import NORM_OFF_FIELD, NORM_ON_FIELD, OFF_POLICY_FIELD

CLIP = 0.2
T = 5  # response positions per row
DP = 2


def token_loss(lp: float, old: float, adv: float) -> float:
    ratio = math.exp(max(-20.0, min(20.0, lp - old)))
    loss = max(-adv * ratio, -adv * min(max(ratio, 1 - CLIP), 1 + CLIP))
    return min(loss, -adv * 3.0) if adv < 0 else loss


def make_rows(seed: int, n: int, off: list[bool], lengths: list[int]) -> dict:
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, T, generator=gen) * 2 - 0.5
    lp = old + 0.3 * torch.randn(n, T, generator=gen)
    adv = torch.randn(n, 1, generator=gen).expand(n, T).clone()
    adv[0] = 0.0  # one zero-advantage row
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return {"lp": lp, "old": old, "adv": adv * mask, "mask": mask, "off": torch.tensor(off)}


def micro_batch_data(rows: dict, idx: list[int], counts: dict | None, *, global_batch_size: int, batch_num_tokens: int):
    """A micro-batch TensorDict as verl's engine hands it to the loss (prompts of one token)."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    b = len(idx)
    fields = {
        "prompts": torch.ones(b, 1, dtype=torch.int64),
        "responses": torch.ones(b, T, dtype=torch.int64),
        "attention_mask": torch.ones(b, 1 + T, dtype=torch.int64),
        "response_mask": rows["mask"][idx].to(torch.int64),
        "old_log_probs": rows["old"][idx],
        "advantages": rows["adv"][idx],
        OFF_POLICY_FIELD: rows["off"][idx].to(torch.int64),
    }
    if counts is not None:
        fields[MINI_BATCH_FIELD] = torch.tensor([counts["mini_batch"][i] for i in idx])
        fields[NORM_ROWS_FIELD] = torch.tensor([counts["rows"][i] for i in idx])
        fields[NORM_ON_FIELD] = torch.tensor([counts["on_rows"][i] for i in idx])
        fields[NORM_OFF_FIELD] = torch.tensor([counts["off_rows"][i] for i in idx])
    data = TensorDict(fields, batch_size=[b])
    tu.assign_non_tensor(data, dp_size=DP, batch_num_tokens=batch_num_tokens, global_batch_size=global_batch_size)
    # model output: per row [log-probs of the T response tokens, one unused position] (verl shifts by one)
    log_probs = torch.cat([torch.cat([rows["lp"][i], torch.zeros(1)]) for i in idx])
    return {"log_probs": log_probs}, data


def actor_config(mode: str):
    from verl.workers.config import ActorConfig
    from verl.workers.config.actor import PolicyLossConfig

    return ActorConfig(strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=CLIP,
                       loss_agg_mode=mode, policy_loss=PolicyLossConfig(loss_mode="repo"))


def run_mini_batch(rows, layout, *, mode, weighting, counts=None, global_batch_size=None):
    """layout[rank] = that rank's micro-batches (row indices). Returns (losses per rank/micro-batch, metrics
    of every micro-batch per rank)."""
    loss_fn = RePOLossFunction(actor_config(mode), RePOConfig(loss_weighting=weighting))
    n_tokens = int(rows["mask"][list(chain.from_iterable(chain.from_iterable(layout)))].sum())
    rows_in = sum(len(mb) for rank in layout for mb in rank)
    losses, metrics = [], []
    for rank in layout:
        losses.append([])
        metrics.append([])
        for idx in rank:
            out, data = micro_batch_data(rows, idx, counts, global_batch_size=global_batch_size or rows_in,
                                         batch_num_tokens=n_tokens)
            loss, m = loss_fn(out, data)
            losses[-1].append(loss)
            metrics[-1].append(m)
    return losses, metrics


def verl_reduce(per_mini_batch: list[list[list[dict]]]) -> dict:
    """verl's metric path from micro-batch metrics to the logged values (module docstring)."""
    from verl.trainer.ppo.v1.trainer_base import rename_dict
    from verl.utils.metric import Metric, reduce_metrics
    from verl.utils.py_functional import append_to_dict

    per_step: dict = {}
    for per_rank in per_mini_batch:
        gathered: dict = {}
        for micro_batches in per_rank:
            rank_metrics: dict = {}
            for m in micro_batches:
                append_to_dict(rank_metrics, m)
            for key, value in rank_metrics.items():
                gathered.setdefault(key, []).append(value)
        output = {
            key: Metric.aggregate_dp(val) if isinstance(val[0], Metric) else list(chain.from_iterable(val))
            for key, val in gathered.items()
        }
        append_to_dict(per_step, output)
    return mean_metrics_from_sums(reduce_metrics(rename_dict(per_step, "actor/")), prefix="actor/")


# ---------------------------------------------------------------------------------------- finding 1


def test_metrics_over_two_ranks_and_uneven_micro_batches_are_the_exact_means():
    # 16 rows; replayed rows land unevenly: rank 0's second micro-batch has none, rank 1's first has 3
    off = [False, False, True, False, False, False, False, False,
           True, True, True, False, False, True, False, False]
    lengths = [5, 3, 4, 5, 2, 5, 1, 4, 5, 5, 2, 3, 4, 5, 5, 1]
    rows = make_rows(0, 16, off, lengths)
    # two mini-batches, each: 2 ranks x 2 micro-batches of 2 rows
    mini_batches = [
        [[[0, 1], [3, 4]], [[8, 9], [11, 12]]],
        [[[2, 5], [6, 7]], [[10, 13], [14, 15]]],
    ]
    per_mini_batch = [run_mini_batch(rows, layout, mode="seq-mean-token-mean", weighting="reference")[1]
                      for layout in mini_batches]
    got = verl_reduce(per_mini_batch)

    lp, old, adv, mask = (rows[k].tolist() for k in ("lp", "old", "adv", "mask"))
    off_tokens = [(b, t) for b in range(16) for t in range(T) if mask[b][t] and off[b]]
    on_rows = [b for b in range(16) if not off[b]]
    off_rows = [b for b in range(16) if off[b]]
    ratios = [math.exp(lp[b][t] - old[b][t]) for b, t in off_tokens]

    def row_loss(b):
        vals = [token_loss(lp[b][t], old[b][t], adv[b][t]) for t in range(T) if mask[b][t]]
        return sum(vals) / len(vals)

    def clipped(b, t):
        r, a = math.exp(lp[b][t] - old[b][t]), adv[b][t]
        return -a * min(max(r, 1 - CLIP), 1 + CLIP) > -a * r

    expected = {
        "actor/repo/off_ratio_mean": sum(ratios) / len(ratios),
        "actor/repo/off_ratio_max": max(ratios),
        "actor/repo/off_row_frac": 5 / 16,  # rows 2, 8, 9, 10, 13
        "actor/repo/nonzero_adv_row_frac": 15 / 16,
        "actor/repo/on_policy_loss": sum(row_loss(b) for b in on_rows) / len(on_rows),
        "actor/repo/off_policy_loss": sum(row_loss(b) for b in off_rows) / len(off_rows),
        "actor/repo/off_clipfrac": sum(clipped(b, t) for b, t in off_tokens) / len(off_tokens),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key
    assert not any(key.startswith("actor/repo/sum/") for key in got)


def test_a_step_without_replay_reports_no_off_policy_means():
    rows = make_rows(1, 8, [False] * 8, [5, 4, 3, 2, 1, 5, 4, 3])
    layout = [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    got = verl_reduce([run_mini_batch(rows, layout, mode="token-mean", weighting="reference")[1]])
    assert got["actor/repo/off_row_frac"] == 0.0
    assert "actor/repo/off_ratio_mean" not in got and "actor/repo/off_ratio_max" not in got
    assert "actor/repo/on_policy_loss" in got


# ---------------------------------------------------------------------------------------- finding 3


def _padded_mini_batch():
    """One mini-batch of 8 rows on 2 ranks (2 micro-batches of 2 each): 6 real rows (4 on, 2 off)
    and 2 padding rows (zero response mask), laid out as verl does (rank r: rows 4r..4r+3)."""
    off = [False, True, False, False, False, False, True, False]
    lengths = [5, 4, 3, 0, 2, 5, 3, 0]  # rows 3 and 7: padding
    rows = make_rows(2, 8, off, lengths)
    layout = [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    valid = [n > 0 for n in lengths]
    counts = mini_batch_row_counts(valid, off, [[0, 1, 2, 3, 4, 5, 6, 7]], num_mini_batches=1)
    return rows, layout, counts, off, valid


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_reference_seq_mean_divides_by_real_rows_not_padded_rows(mode):
    rows, layout, counts, off, valid = _padded_mini_batch()
    # verl passes global_batch_size = 8 (the padded mini-batch); the gradient-carrying objective is
    # the sum of every micro-batch loss divided by dp (gradients are averaged over ranks)
    losses, _ = run_mini_batch(rows, layout, mode=mode, weighting="reference", counts=counts, global_batch_size=8)
    objective = sum(loss.item() for rank in losses for loss in rank) / DP
    lp, old, adv, mask = (rows[k].tolist() for k in ("lp", "old", "adv", "mask"))

    def row_loss(b):
        vals = [token_loss(lp[b][t], old[b][t], adv[b][t]) for t in range(T) if mask[b][t]]
        if mode == "seq-mean-token-mean":
            return sum(vals) / len(vals)
        return sum(vals) / (T if mode == "seq-mean-token-sum-norm" else 1)

    real = [b for b in range(8) if valid[b]]
    assert objective == pytest.approx(sum(row_loss(b) for b in real) / 6, rel=1e-5)


def test_paper_weighting_side_counts_per_mini_batch():
    rows, layout, counts, off, valid = _padded_mini_batch()
    losses, _ = run_mini_batch(rows, layout, mode="seq-mean-token-mean", weighting="paper", counts=counts,
                               global_batch_size=8)
    objective = sum(loss.item() for rank in losses for loss in rank) / DP
    lp, old, adv, mask = (rows[k].tolist() for k in ("lp", "old", "adv", "mask"))

    def row_loss(b):
        vals = [token_loss(lp[b][t], old[b][t], adv[b][t]) for t in range(T) if mask[b][t]]
        return sum(vals) / len(vals)

    on = [b for b in range(8) if valid[b] and not off[b]]
    offs = [b for b in range(8) if valid[b] and off[b]]
    expected = sum(map(row_loss, on)) / len(on) + sum(map(row_loss, offs)) / len(offs)
    assert objective == pytest.approx(expected, rel=1e-5)


def test_a_micro_batch_mixing_mini_batches_is_an_error():
    rows, layout, counts, _, _ = _padded_mini_batch()
    counts = dict(counts, mini_batch=[0.0, 1.0] + counts["mini_batch"][2:])
    with pytest.raises(RuntimeError, match="mini-batch layout"):
        run_mini_batch(rows, layout, mode="seq-mean-token-mean", weighting="reference", counts=counts)
