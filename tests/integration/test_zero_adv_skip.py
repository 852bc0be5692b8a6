"""Skipping zero-advantage rows leaves the actor update unchanged (``zero_adv_skip``).

The update is replayed here the way verl 0.9.1 runs it, without Ray: the batch is cut into one
contiguous chunk per data-parallel rank (``KVBatchMeta.chunk``), every rank cuts its chunk into
mini-batches (in order, or shuffled with ``seed + rank``), ``batch_num_tokens`` is the mini-batch's
valid tokens over all ranks, each rank's micro-batches go through the real actor loss
(``RePOLossFunction`` -> verl's ``ppo_loss`` -> the registered ``repo`` loss), each rank's loss is
multiplied by dp_size inside the loss and the ranks' gradients are averaged, then gradient clipping
and one AdamW step per mini-batch (``TrainingWorker.train_mini_batch`` / ``FSDPEngine``).

Tolerance. Both runs add the same non-zero terms: skipped rows contribute exact zeros, and adding
+0.0 is exact. What changes is the grouping of rows into micro-batches and ranks, i.e. the order of
float32 summation inside each micro-batch's masked sums and across gradient accumulation: each
reordered sum of n terms can differ by about n * 2^-24 relative (n <= 64 here: ~4e-6 at worst;
measured: gradients within 8e-9, parameters within 3e-8). Gradients are compared with atol 1e-7,
parameters after AdamW with atol 1e-6, both rtol 1e-5. AdamW's first steps are nearly invariant to
the gradient's scale, so the gradients (before clipping) and the norm clipping sees are compared
too: a wrong normaliser shows there (the control test: >= 1e-4, 5% of the norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from verl.utils import tensordict_utils as tu
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from repo_ext.algorithm.config import RePOConfig
from repo_ext.integration.estimators import RePOLossFunction
from repo_ext.integration.replay_rows import NORM_OFF_FIELD, NORM_ON_FIELD, OFF_POLICY_FIELD
from repo_ext.integration.zero_adv_skip import (
    MB_ROWS_FIELD,
    MB_TOKENS_FIELD,
    PADDING_SEQ_LEN,
    carried_normalisers,
    layout_padding_rows,
    mini_batch_members,
    padding_row,
    plan_zero_advantage_skip,
    resolve_skip_zero_advantage_rows,
    row_skip_inputs,
    skip_conflicts,
)

ATOL, GRAD_ATOL, RTOL = 1e-6, 1e-7, 1e-5
VOCAB, EOS, LR, WEIGHT_DECAY, CLIP = 13, 12, 1e-2, 0.1, 1.0


# ------------------------------------------------------------------------------------ settings


def _verl_config(**actor):
    base = {
        "use_kl_loss": False,
        "entropy_coeff": 0.0,
        "ppo_epochs": 1,
        "shuffle": False,
        "policy_loss": {"loss_mode": "repo"},
    }
    base.update(actor)
    return OmegaConf.create(
        {"actor_rollout_ref": {"actor": base}, "critic": {"enable": None}, "algorithm": {"adv_estimator": "repo_split"}}
    )


@pytest.mark.parametrize("value", ["auto", True, False])
def test_setting_values(value):
    assert RePOConfig.from_mapping({"skip_zero_advantage_rows": value}).skip_zero_advantage_rows == value


def test_setting_strings_and_invalid_values():
    assert RePOConfig.from_mapping({"skip_zero_advantage_rows": "TRUE"}).skip_zero_advantage_rows is True
    for bad in (1, 0, "yes", None):
        with pytest.raises(ValueError, match=r"algorithm\.repo\.skip_zero_advantage_rows=.* one of auto, true, false"):
            RePOConfig.from_mapping({"skip_zero_advantage_rows": bad})


def test_default_is_auto_and_on_where_exact():
    assert RePOConfig().skip_zero_advantage_rows == "auto"
    assert skip_conflicts(_verl_config()) == []
    assert resolve_skip_zero_advantage_rows(_verl_config(), "auto") is True
    assert resolve_skip_zero_advantage_rows(_verl_config(), False) is False


@pytest.mark.parametrize(
    ("actor", "critic", "named"),
    [
        ({"use_kl_loss": True}, None, "actor_rollout_ref.actor.use_kl_loss=True"),
        ({"entropy_coeff": 0.01}, None, "actor_rollout_ref.actor.entropy_coeff=0.01"),
        ({"policy_loss": {"loss_mode": "gspo"}}, None, "actor_rollout_ref.actor.policy_loss.loss_mode=gspo"),
        ({"ppo_epochs": 2, "shuffle": True}, None, "actor_rollout_ref.actor.ppo_epochs=2"),
        ({"loss_agg_mode": "seq-mean-token-sum-norm"}, None, "actor_rollout_ref.actor.loss_scale_factor=null"),
    ],
)
def test_conflicts_turn_auto_off_and_make_true_an_error(actor, critic, named):
    config = _verl_config(**actor)
    config.critic.enable = critic
    assert resolve_skip_zero_advantage_rows(config, "auto") is False
    assert resolve_skip_zero_advantage_rows(config, False) is False
    with pytest.raises(ValueError, match=r"algorithm\.repo\.skip_zero_advantage_rows=true") as err:
        resolve_skip_zero_advantage_rows(config, True)
    assert named in str(err.value)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_other_agg_modes_and_a_constant_horizon_stay_on(mode):
    assert resolve_skip_zero_advantage_rows(_verl_config(loss_agg_mode=mode), "auto") is True
    constant = _verl_config(loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=512)
    assert resolve_skip_zero_advantage_rows(constant, True) is True


def test_several_epochs_without_shuffle_stay_exact():
    assert resolve_skip_zero_advantage_rows(_verl_config(ppo_epochs=3, shuffle=False), True) is True


# ------------------------------------------------------------------------------------ planning


def _torch_shuffle(n: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader iterator's base seed
    return torch.randperm(n, generator=generator).tolist()


def test_mini_batch_members_unshuffled_by_hand():
    # 8 rows, 2 ranks (rows 0-3 | 4-7), mini-batches of 4 rows = 2 per rank, in order
    assert mini_batch_members(8, dp_size=2, rows_per_mini_batch=4, shuffle=False, seed=0) == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_mini_batch_members_shuffled_as_torch_randperm_per_rank():
    """verl's DataLoader(shuffle=True, generator seeded seed + rank): the iterator first draws its base
    seed from the generator (torch/utils/data/dataloader.py), then RandomSampler draws torch.randperm."""
    members = mini_batch_members(12, dp_size=2, rows_per_mini_batch=4, shuffle=True, seed=7)
    expected = [[], [], []]
    for rank in range(2):
        perm = _torch_shuffle(6, 7 + rank)
        for k in range(3):
            expected[k] += [rank * 6 + p for p in perm[2 * k : 2 * k + 2]]
    assert members == expected


def test_plan_by_hand():
    # two mini-batches of 4 rows on 2 ranks; mini-batch 0 keeps rows 0 and 5, mini-batch 1 keeps none
    members = [[0, 1, 4, 5], [2, 3, 6, 7]]
    nonzero = [True, False, False, False, False, True, False, False]
    tokens = [3, 2, 4, 1, 5, 6, 2, 0]  # row 7: no token at all (padding)
    plan = plan_zero_advantage_skip(nonzero, tokens, members, dp_size=2, row_multiple=2)
    assert plan.rows_per_mini_batch == 2
    # rank 0: its share of mb0, then of mb1; rank 1 likewise (padding -1 - k)
    assert plan.layout == [0, -2, 5, -2]
    assert plan.mini_batch_tokens == [3 + 2 + 5 + 6, 4 + 1 + 2 + 0]
    assert plan.mini_batch_rows == [4, 4]
    assert (plan.skipped_rows, plan.skipped_tokens) == (5, 2 + 5 + 4 + 1 + 2)
    assert (plan.updated_rows, plan.updated_tokens, plan.padding_rows, plan.dropped_padding_rows) == (2, 9, 2, 1)


def test_row_skip_inputs_keep_by_response_mask_and_count_loss_mask():
    """Rejection sampling zeroes tokens in response_mask only: a rejected token adds nothing to the loss
    (its row is kept only for a non-zero advantage on a token it keeps) but the engine still counts it."""
    adv = torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    response = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [0, 0, 0]])  # row 3: every token rejected
    loss = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]])
    nonzero, tokens = row_skip_inputs(adv, response, loss)
    assert nonzero == [True, False, True, False]
    assert tokens == [3, 3, 2, 3]


def test_padding_row_keeps_every_field_and_contributes_nothing():
    template = _row(prompt=[1, 2, 3], response=[4, 5, 6, 7], advantage=1.5, off=True)
    template[MB_TOKENS_FIELD] = torch.tensor(9)
    template["log_probs"] = torch.randn(7)  # the engine's whole-sequence log-probs (old-log-prob pass)
    row = padding_row(template, EOS)
    assert set(row) == set(template)
    assert row["prompts"].tolist() == [EOS] and row["responses"].tolist() == [EOS]
    assert row["response_mask"].tolist() == [0] and row["advantages"].tolist() == [0.0]
    assert row["input_ids"].shape[0] == row["attention_mask"].shape[0] == row["position_ids"].shape[0] == PADDING_SEQ_LEN
    assert row["log_probs"].tolist() == [0.0, 0.0]
    assert int(row[OFF_POLICY_FIELD]) == 1 and int(row[MB_TOKENS_FIELD]) == 9


# ------------------------------------------------------------------------------------ the update


class TinyLM(torch.nn.Module):
    """Next-token model: embedding -> tanh layer -> logits (enough to give every row its own gradient)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.hidden = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, VOCAB)
        self.rows_seen = 0

    def log_probs(self, micro) -> torch.Tensor:
        """verl's layout: one flat (total tokens,) tensor; entry t of a sequence is log p(token t+1)."""
        out = []
        for prompt, response in zip(micro["prompts"].unbind(), micro["responses"].unbind(), strict=True):
            ids = torch.cat([prompt, response])
            logp = torch.log_softmax(self.out(torch.tanh(self.hidden(self.embed(ids)))), dim=-1)
            nxt = logp[:-1].gather(1, ids[1:, None]).squeeze(1)
            out.append(torch.cat([nxt, nxt.new_zeros(1)]))
            self.rows_seen += 1
        return torch.cat(out)


def _row(prompt, response, advantage, off, valid=None, old_shift=0.0):
    n = len(response)
    mask = torch.ones(n, dtype=torch.int64) if valid is None else torch.tensor(valid, dtype=torch.int64)
    ids = torch.tensor(prompt + response, dtype=torch.int64)
    return {
        "prompts": torch.tensor(prompt, dtype=torch.int64),
        "responses": torch.tensor(response, dtype=torch.int64),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": torch.arange(len(ids)),
        "response_mask": mask,
        "loss_mask": mask.clone(),
        "advantages": torch.full((n,), float(advantage)) * mask,
        "old_log_probs": torch.full((n,), -2.5 + old_shift),
        OFF_POLICY_FIELD: torch.tensor(int(off), dtype=torch.int64),
        "uid": "u",
    }


def _batch(seed: int, num_rows: int, zero_rows: set[int]):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(num_rows):
        plen = int(torch.randint(1, 4, (), generator=gen))
        rlen = int(torch.randint(2, 7, (), generator=gen))
        prompt = torch.randint(0, VOCAB - 1, (plen,), generator=gen).tolist()
        response = torch.randint(0, VOCAB - 1, (rlen,), generator=gen).tolist()
        valid = [1] * rlen
        if i % 5 == 3:
            valid[-1] = 0  # a masked tail
        adv = 0.0 if i in zero_rows else float(torch.randn((), generator=gen))
        shift = float(torch.randn((), generator=gen)) * 0.5  # ratios away from 1: some clip
        rows.append(_row(prompt, response, adv, off=i % 3 == 0, valid=valid, old_shift=shift))
    return rows


_JAGGED = ("prompts", "responses", "input_ids", "attention_mask", "position_ids", "response_mask", "loss_mask",
           "advantages", "old_log_probs")


def _jagged_tensordict(rows):
    """Rows as the workers receive them from TransferQueue: per-token fields jagged (nested), even
    when a micro-batch's rows happen to have equal lengths (verl's list_of_dict_to_tensordict would
    stack those, and ppo_loss's slicing expects prompts and attention masks in the same layout)."""
    td = list_of_dict_to_tensordict(rows)
    for name in _JAGGED:
        if not td[name].is_nested:
            td[name] = torch.nested.as_nested_tensor(list(td[name].unbind()), layout=torch.jagged)
    return td


def _paper_counts(rows, members):
    """The paper weighting's per-side rows of each mini-batch, written on its rows (as the trainer does)."""
    for mb in members:
        valid = [i for i in mb if int(rows[i]["response_mask"].sum()) > 0]
        n_off = sum(int(rows[i][OFF_POLICY_FIELD]) for i in valid)
        for i in mb:
            rows[i][NORM_ON_FIELD] = torch.tensor(float(len(valid) - n_off))
            rows[i][NORM_OFF_FIELD] = torch.tensor(float(n_off))


@dataclass
class Step:
    params: list[torch.Tensor]  # after the optimizer step
    grads: list[torch.Tensor]  # the mini-batch's gradient, before clipping
    grad_norm: float  # what gradient clipping saw


def _verl_update(model, optimizer, rows, *, mini_batch_rows, dp, micro, global_batch_size, loss_fn, shuffle=False, seed=0):
    """verl's actor update over ``rows`` (in batch order); one :class:`Step` per optimizer step."""
    per_rank = len(rows) // dp
    per_rank_mb = mini_batch_rows // dp
    orders = []
    for rank in range(dp):
        order = list(range(per_rank))
        if shuffle:
            order = _torch_shuffle(per_rank, seed + rank)
        orders.append([rank * per_rank + j for j in order])
    snapshots = []
    for k in range(per_rank // per_rank_mb):
        shares = [order[k * per_rank_mb : (k + 1) * per_rank_mb] for order in orders]
        batch_num_tokens = sum(int(rows[i]["loss_mask"].sum()) for share in shares for i in share)
        optimizer.zero_grad(set_to_none=True)
        for share in shares:
            td = _jagged_tensordict([rows[i] for i in share])
            tu.assign_non_tensor(td, dp_size=dp, batch_num_tokens=batch_num_tokens, global_batch_size=global_batch_size)
            for micro_batch in tu.chunk_tensordict(td, len(share) // micro):
                loss, _ = loss_fn({"log_probs": model.log_probs(micro_batch)}, micro_batch)
                (loss / dp).backward()  # the all-reduce averages the ranks' gradients
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        snapshots.append(Step([p.detach().clone() for p in model.parameters()], grads, float(norm)))
    return snapshots


def _loss_fn(agg_mode: str, weighting: str):
    from verl.workers.config import FSDPActorConfig, PolicyLossConfig

    actor = FSDPActorConfig(
        strategy="fsdp2",
        ppo_mini_batch_size=8,
        ppo_micro_batch_size_per_gpu=2,
        rollout_n=1,
        loss_agg_mode=agg_mode,
        policy_loss=PolicyLossConfig(loss_mode="repo"),
    )
    return RePOLossFunction(actor, RePOConfig(loss_weighting=weighting, off_policy_loss_coef=0.7))


def _fresh():
    model = TinyLM()
    return model, torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)


def _run_both(rows, *, agg_mode, weighting, dp, micro, mini_batch_rows, shuffle=False, carry=True):
    """(params after each step without skipping, with skipping, rows forwarded without, with)."""
    loss_fn = _loss_fn(agg_mode, weighting)
    members = mini_batch_members(len(rows), dp_size=dp, rows_per_mini_batch=mini_batch_rows, shuffle=shuffle, seed=0)
    _paper_counts(rows, members)

    full_model, full_opt = _fresh()
    full = _verl_update(
        full_model, full_opt, rows, mini_batch_rows=mini_batch_rows, dp=dp, micro=micro,
        global_batch_size=mini_batch_rows, loss_fn=loss_fn, shuffle=shuffle, seed=0,
    )

    nonzero = [bool(((r["advantages"] != 0) & r["loss_mask"].bool()).any()) for r in rows]
    tokens = [int(r["loss_mask"].sum()) for r in rows]
    plan = plan_zero_advantage_skip(nonzero, tokens, members, dp_size=dp, row_multiple=dp * micro)
    pads = iter(layout_padding_rows(plan, [rows[m[0]] for m in members], EOS))
    smaller = []
    for entry in plan.layout:
        row = dict(rows[entry]) if entry >= 0 else next(pads)
        if entry >= 0:
            row.update(carried_normalisers(plan, plan.mini_batch_of[entry]))
        if not carry:
            row.pop(MB_TOKENS_FIELD)
            row.pop(MB_ROWS_FIELD)
        smaller.append(row)
    skip_model, skip_opt = _fresh()
    skipped = _verl_update(
        skip_model, skip_opt, smaller, mini_batch_rows=plan.rows_per_mini_batch, dp=dp, micro=micro,
        global_batch_size=plan.rows_per_mini_batch, loss_fn=loss_fn,
    )
    return full, skipped, full_model.rows_seen, skip_model.rows_seen, plan


def _max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _assert_same(full: list[Step], skipped: list[Step]):
    assert len(full) == len(skipped)
    for a, b in zip(full, skipped, strict=True):
        for x, y in zip(a.grads, b.grads, strict=True):
            torch.testing.assert_close(x, y, atol=GRAD_ATOL, rtol=RTOL)
        assert b.grad_norm == pytest.approx(a.grad_norm, rel=RTOL)
        for x, y in zip(a.params, b.params, strict=True):
            torch.testing.assert_close(x, y, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("weighting", ["reference", "paper"])
@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean"])
def test_same_parameters_two_mini_batches_two_ranks(agg_mode, weighting):
    if weighting == "paper" and agg_mode == "token-mean":
        pytest.skip("the paper weighting is per sequence; RePOLossFunction refuses token-* modes with it")
    rows = _batch(seed=1, num_rows=32, zero_rows={1, 2, 4, 7, 8, 9, 12, 13, 14, 17, 20, 21, 24, 25, 28, 30})
    full, skipped, seen_full, seen_skip, plan = _run_both(
        rows, agg_mode=agg_mode, weighting=weighting, dp=2, micro=2, mini_batch_rows=16
    )
    assert len(full) == len(skipped) == 2  # two optimizer steps either way
    assert plan.skipped_rows == 16 and seen_skip < seen_full
    init = [p.detach() for p in TinyLM().parameters()]
    assert _max_diff(full[-1].params, init) > 1e-3  # the update did something
    _assert_same(full, skipped)


def test_token_mean_with_shuffled_mini_batches():
    rows = _batch(seed=2, num_rows=24, zero_rows={0, 3, 5, 6, 10, 11, 15, 16, 19, 22})
    full, skipped, _, _, _ = _run_both(
        rows, agg_mode="token-mean", weighting="reference", dp=2, micro=2, mini_batch_rows=8, shuffle=True
    )
    assert len(full) == 3
    _assert_same(full, skipped)


@pytest.mark.parametrize("weighting", ["reference", "paper"])
def test_all_zero_mini_batch_still_steps(weighting):
    """Mini-batch 1 has only zero-advantage rows: skipping runs it on padding rows only, and AdamW's
    momentum and weight decay still move every parameter, exactly as without skipping."""
    rows = _batch(seed=3, num_rows=16, zero_rows=set(range(4, 8)) | set(range(12, 16)))  # rank shares of mb 1
    full, skipped, _, _, plan = _run_both(
        rows, agg_mode="seq-mean-token-mean", weighting=weighting, dp=2, micro=2, mini_batch_rows=8
    )
    assert plan.layout.count(-2) == plan.rows_per_mini_batch  # mini-batch 1: all padding
    assert _max_diff(skipped[1].params, skipped[0].params) > 1e-4  # the second step moved parameters
    assert skipped[1].grad_norm == 0.0
    _assert_same(full, skipped)


@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean"])
def test_without_carried_normalisers_the_update_differs(agg_mode):
    """Control: dividing by the smaller batch's own counts changes the gradient far beyond the tolerance
    (AdamW's first steps are nearly scale-invariant, so the gradients are what show it)."""
    rows = _batch(seed=1, num_rows=32, zero_rows={1, 2, 4, 7, 8, 9, 12, 13, 14, 17, 20, 21, 24, 25, 28, 30})
    full, skipped, _, _, _ = _run_both(
        rows, agg_mode=agg_mode, weighting="reference", dp=2, micro=2, mini_batch_rows=16, carry=False
    )
    assert max(_max_diff(a.grads, b.grads) for a, b in zip(full, skipped, strict=True)) > 1000 * GRAD_ATOL
    assert any(abs(a.grad_norm - b.grad_norm) > 0.05 * a.grad_norm for a, b in zip(full, skipped, strict=True))


def test_one_rank_one_row_micro_batches():
    """dp 1, micro-batches of one row: every row's loss is its own micro-batch's sum."""
    rows = _batch(seed=4, num_rows=12, zero_rows={0, 1, 2, 5, 9})
    full, skipped, _, _, _ = _run_both(rows, agg_mode="token-mean", weighting="reference", dp=1, micro=1, mini_batch_rows=6)
    _assert_same(full, skipped)


def test_carried_normalisers_refuse_mixed_mini_batches():
    from repo_ext.integration.zero_adv_skip import apply_carried_normalisers

    rows = [_row([1], [2, 3], 1.0, False), _row([1], [2], 1.0, False)]
    rows[0].update({MB_TOKENS_FIELD: torch.tensor(5), MB_ROWS_FIELD: torch.tensor(4)})
    rows[1].update({MB_TOKENS_FIELD: torch.tensor(6), MB_ROWS_FIELD: torch.tensor(4)})
    td = list_of_dict_to_tensordict(rows)
    with pytest.raises(RuntimeError, match="different mini-batches"):
        apply_carried_normalisers(td)
    rows[1][MB_TOKENS_FIELD] = torch.tensor(5)
    td = list_of_dict_to_tensordict(rows)
    tu.assign_non_tensor(td, batch_num_tokens=3, global_batch_size=2)
    apply_carried_normalisers(td)
    assert (td["batch_num_tokens"], td["global_batch_size"]) == (5, 4)


# ------------------------------------------------------------------------------------ composed configs

def _composed(*overrides):
    from launch_config import SMALL_REPO_LAUNCH, compose_verl

    return compose_verl([*SMALL_REPO_LAUNCH, *overrides])


@pytest.mark.parametrize("strategy", ["recent_k", "none"])
def test_launch_default_is_auto_and_skips(strategy):
    """``algorithm=repo`` as launched (strategy=none: GRPO inside the RePO trainer) skips by default."""
    from repo_ext.integration.config_checks import RePOLaunchCheck
    from repo_ext.integration.estimators import repo_config_from_algorithm

    cfg = _composed(f"algorithm.repo.strategy={strategy}")
    repo = repo_config_from_algorithm(cfg.algorithm)
    assert cfg.algorithm.repo.skip_zero_advantage_rows == "auto" and repo.skip_zero_advantage_rows == "auto"
    RePOLaunchCheck().on_job_start(config=cfg)
    assert resolve_skip_zero_advantage_rows(cfg, repo.skip_zero_advantage_rows) is True


def test_launch_check_refuses_forced_skipping_with_kl_loss():
    from repo_ext.integration.config_checks import RePOLaunchCheck
    from repo_ext.integration.estimators import repo_config_from_algorithm

    cfg = _composed("actor_rollout_ref.actor.use_kl_loss=True", "algorithm.repo.skip_zero_advantage_rows=true")
    with pytest.raises(ValueError, match=r"skip_zero_advantage_rows=true .*actor_rollout_ref\.actor\.use_kl_loss=True"):
        RePOLaunchCheck().on_job_start(config=cfg)
    auto = _composed("actor_rollout_ref.actor.use_kl_loss=True")
    RePOLaunchCheck().on_job_start(config=auto)
    assert resolve_skip_zero_advantage_rows(auto, repo_config_from_algorithm(auto.algorithm).skip_zero_advantage_rows) is False


def test_launch_check_refuses_forced_skipping_with_dr_grpo_aggregation_before_ray():
    """Dr. GRPO's aggregation without a constant loss_scale_factor: ``true`` is refused by the launch
    check (before Ray), ``auto`` launches without skipping, a constant horizon skips."""
    from repo_ext.integration.config_checks import RePOLaunchCheck
    from repo_ext.integration.estimators import repo_config_from_algorithm

    dr_grpo = ("actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm", "algorithm.norm_adv_by_std_in_grpo=false")
    forced = _composed(*dr_grpo, "algorithm.repo.skip_zero_advantage_rows=true")
    with pytest.raises(ValueError, match=r"skip_zero_advantage_rows=true .*loss_scale_factor=null"):
        RePOLaunchCheck().on_job_start(config=forced)
    auto = _composed(*dr_grpo)
    RePOLaunchCheck().on_job_start(config=auto)
    assert resolve_skip_zero_advantage_rows(auto, repo_config_from_algorithm(auto.algorithm).skip_zero_advantage_rows) is False
    constant = _composed(*dr_grpo, "algorithm.repo.skip_zero_advantage_rows=true", "actor_rollout_ref.actor.loss_scale_factor=64")
    RePOLaunchCheck().on_job_start(config=constant)
