"""Zero-advantage skipping through the trainer's own update path, for every verl ``loss_agg_mode``.

Issue #23 finding 8 and 11a. The update runs as in a RePO step, without Ray: ``RePOTrainer._update_actor``
(``write_mini_batch_counts`` writes each mini-batch's row counts on its rows, then
``update_actor_skipping`` reads advantages and masks from TransferQueue, plans, writes the carried
normalisers and the padding rows, and calls verl's own ``PPOTrainer._update_actor``). TransferQueue
is a dict here, and the actor worker group a stand-in that does what verl's ``TrainingWorker``
and ``FSDPEngine`` do with the ``KVBatchMeta`` on two data-parallel ranks: rank ``r`` reads the
``r``-th contiguous chunk (``KVBatchMeta.chunk``), iterates it in mini-batches with verl's
``tensordict_utils.make_iterator`` (seed ``data_loader_seed + r``), counts ``batch_num_tokens``
over every rank's ``loss_mask``, cuts micro-batches with verl's ``prepare_micro_batches``, runs the
real actor loss (``RePOLossFunction`` -> verl's ``ppo_loss`` -> the registered ``repo`` loss) and
backpropagates loss / dp (FSDP averages the ranks' gradients), then clips and takes one AdamW step
per mini-batch; its metrics go through verl's aggregation (``append_to_dict`` per rank,
``Metric.aggregate_dp``, ``reduce_metrics``).

Each case runs the same update twice, with ``skip_zero_advantage_rows`` as ``auto`` resolves it
for the case's config and with skipping off, and compares the gradients of every mini-batch (before
clipping), the norm clipping sees, and the parameters after AdamW. Tolerance as justified in
``test_zero_adv_skip``: only float summation order may differ (gradients atol 1e-7, parameters 1e-6,
rtol 1e-5); the controls show that a wrong normaliser misses it by orders of magnitude.
"""

from __future__ import annotations

import copy
from itertools import chain

import pytest
import torch
import transfer_queue as tq
from omegaconf import OmegaConf
from transfer_queue import KVBatchMeta
from verl.utils import tensordict_utils as tu
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from repo_ext.algorithm.config import RePOConfig
from repo_ext.integration.estimators import RePOLossFunction
from repo_ext.integration.replay_rows import OFF_POLICY_FIELD
from repo_ext.integration.hooks.step_state import StepState as _StepState
from repo_ext.integration.trainer import RePOTrainer
from repo_ext.integration.zero_adv_skip import resolve_skip_zero_advantage_rows

VOCAB, EOS, LR, WEIGHT_DECAY, CLIP = 13, 12, 1e-2, 0.1, 1.0
GRAD_ATOL, ATOL, RTOL = 1e-7, 1e-6, 1e-5
DP, MICRO, MINI_BATCH_ROWS, NUM_ROWS = 2, 2, 16, 32
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
_JAGGED = ("prompts", "responses", "input_ids", "attention_mask", "position_ids", "response_mask", "loss_mask",
           "advantages", "old_log_probs")


# ------------------------------------------------------------------------------------ the model


class TinyLM(torch.nn.Module):
    """Next-token model: embedding -> tanh layer -> logits; verl's flat no-padding output layout."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.hidden = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, VOCAB)

    def forward_rows(self, micro, with_entropy: bool) -> dict[str, torch.Tensor]:
        """``log_probs`` (and ``entropy``): one flat (total tokens,) tensor; entry t of a sequence
        belongs to the prediction of token t+1 (verl's ``no_padding_2_padding`` shifts by one)."""
        log_probs, entropies = [], []
        for prompt, response in zip(micro["prompts"].unbind(), micro["responses"].unbind(), strict=True):
            ids = torch.cat([prompt, response])
            logp = torch.log_softmax(self.out(torch.tanh(self.hidden(self.embed(ids)))), dim=-1)
            nxt = logp[:-1].gather(1, ids[1:, None]).squeeze(1)
            ent = -(logp.exp() * logp).sum(-1)[:-1]
            log_probs.append(torch.cat([nxt, nxt.new_zeros(1)]))
            entropies.append(torch.cat([ent, ent.new_zeros(1)]))
        out = {"log_probs": torch.cat(log_probs)}
        if with_entropy:
            out["entropy"] = torch.cat(entropies)
        return out

    def response_entropy(self, prompt: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """(L,) entropy of the distribution that predicts each response token."""
        with torch.no_grad():
            ids = torch.cat([prompt, response])
            logp = torch.log_softmax(self.out(torch.tanh(self.hidden(self.embed(ids)))), dim=-1)
            return -(logp.exp() * logp).sum(-1)[len(prompt) - 1 : -1]


# ------------------------------------------------------------------------------------ rows


def _rows(seed: int, *, rejected: bool = False) -> dict[str, dict]:
    """32 rows; about half with a zero advantage, clustered so that some micro-batches lose rows.

    ``rejected``: rollout correction's rejection sampling ran (verl zeroes rejected tokens in
    ``response_mask`` only, ``loss_mask`` keeps them): some tokens of some rows, and every token
    of one row with a non-zero advantage, are rejected.
    """
    gen = torch.Generator().manual_seed(seed)
    zero = {1, 2, 4, 7, 8, 9, 12, 13, 14, 17, 20, 21, 24, 25, 28, 30}
    rows = {}
    for i in range(NUM_ROWS):
        plen = int(torch.randint(1, 4, (), generator=gen))
        # lengths 2..9: micro-batches' longest responses differ (seq-mean-token-sum-norm's horizon)
        rlen = int(torch.randint(2, 10, (), generator=gen))
        prompt = torch.randint(0, VOCAB - 1, (plen,), generator=gen)
        response = torch.randint(0, VOCAB - 1, (rlen,), generator=gen)
        valid = torch.ones(rlen, dtype=torch.int64)
        if i % 5 == 3:
            valid[-1] = 0  # a masked tail (a tool-output token, say)
        loss_mask = valid.clone()
        if rejected and i % 4 == 2:
            valid[0] = 0  # a rejected token: response_mask 0, loss_mask 1
        if rejected and i == 11:
            valid[:] = 0  # every token rejected, advantage non-zero
        adv = 0.0 if i in zero else float(torch.randn((), generator=gen))
        ids = torch.cat([prompt, response])
        rows[f"r{i:02d}"] = {
            "prompts": prompt,
            "responses": response,
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(len(ids)),
            "response_mask": valid,
            "loss_mask": loss_mask,
            "advantages": torch.full((rlen,), adv) * loss_mask,
            "old_log_probs": torch.full((rlen,), -2.5) + 0.5 * torch.randn(rlen, generator=gen),
            OFF_POLICY_FIELD: torch.tensor(int(i % 3 == 0)),
            "uid": f"u{i // 4}",
        }
    return rows


class Store:
    """TransferQueue's key-value calls on a dict: per-token fields come back jagged, as from TQ."""

    def __init__(self, rows: dict[str, dict]):
        self.rows = rows

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        names = list(select_fields) if select_fields is not None else list(self.rows[keys[0]])
        td = list_of_dict_to_tensordict([{name: self.rows[k][name] for name in names} for k in keys])
        for name in names:
            if name in _JAGGED and not td[name].is_nested:
                td[name] = torch.nested.as_nested_tensor(list(td[name].unbind()), layout=torch.jagged)
        return td

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        for i, key in enumerate(keys):
            row = self.rows.setdefault(key, {})
            for name in fields.keys():
                value = fields[name][i]
                row[name] = value.clone() if isinstance(value, torch.Tensor) else value
        return KVBatchMeta(keys=list(keys), tags=list(tags or [{} for _ in keys]), partition_id=partition_id)

    def kv_clear(self, keys, partition_id):
        for key in keys:
            del self.rows[key]


class ActorGroup:
    """verl's actor worker group for ``update_actor``: two ranks, FSDP-style (module docstring)."""

    _dispatch_info = {"actor": [0, 1]}

    def __init__(self, store: Store, loss_fn, model: TinyLM, micro: int):
        self.store, self.loss_fn, self.model, self.micro = store, loss_fn, model, micro
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.steps: list[dict] = []  # per optimizer step: grads, grad_norm, params after, rows forwarded

    def update_actor(self, batch: KVBatchMeta):
        from verl.utils.metric import Metric
        from verl.utils.py_functional import append_to_dict
        from verl.workers.engine.utils import prepare_micro_batches

        info = batch.extra_info
        iterators = []
        for rank, chunk in enumerate(batch.chunk(DP)):
            data = self.store.kv_batch_get(keys=chunk.keys, partition_id=chunk.partition_id)
            iterators.append(tu.make_iterator(data, mini_batch_size=info["mini_batch_size"] // DP, epochs=info["epochs"],
                                              seed=info["seed"] + rank, dataloader_kwargs=info["dataloader_kwargs"]))
        metrics: dict = {}
        for shares in zip(*iterators, strict=True):
            batch_num_tokens = sum(int(share["loss_mask"].values().sum()) for share in shares)
            self.optimizer.zero_grad(set_to_none=True)
            gathered: dict = {}
            rows = 0
            for share in shares:
                tu.assign_non_tensor(share, dp_size=DP, batch_num_tokens=batch_num_tokens,
                                     global_batch_size=info["global_batch_size"], use_dynamic_bsz=False,
                                     micro_batch_size_per_gpu=self.micro)
                micro_batches, _ = prepare_micro_batches(share)
                rank_metrics: dict = {}
                for micro in micro_batches:
                    out = self.model.forward_rows(micro, with_entropy=bool(info["calculate_entropy"]))
                    loss, m = self.loss_fn(out, micro)
                    (loss / DP).backward()
                    append_to_dict(rank_metrics, m)
                    rows += len(micro)
                for key, value in rank_metrics.items():
                    gathered.setdefault(key, []).append(value)
            grads = [p.grad.detach().clone() for p in self.model.parameters()]
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP))
            self.optimizer.step()
            self.steps.append({"grads": grads, "grad_norm": norm, "rows": rows,
                               "params": [p.detach().clone() for p in self.model.parameters()]})
            output = {key: Metric.aggregate_dp(val) if isinstance(val[0], Metric) else list(chain.from_iterable(val))
                      for key, val in gathered.items()}
            output["grad_norm"] = norm
            append_to_dict(metrics, output)
        metrics["mfu"] = [0.0]
        return {"metrics": metrics}


def _verl_config(mode: str, *, loss_scale_factor=None, calculate_entropy=False, rollout_rs=None):
    return OmegaConf.create({
        "actor_rollout_ref": {
            "actor": {
                "ppo_mini_batch_size": MINI_BATCH_ROWS, "ppo_micro_batch_size_per_gpu": MICRO, "use_dynamic_bsz": False,
                "ppo_epochs": 1, "shuffle": False, "data_loader_seed": 42, "loss_agg_mode": mode,
                "loss_scale_factor": loss_scale_factor, "use_kl_loss": False, "entropy_coeff": 0.0,
                "calculate_entropy": calculate_entropy, "policy_loss": {"loss_mode": "repo"},
            },
            "rollout": {"n": 1, "temperature": 1.0, "log_prob_use_dynamic_bsz": False,
                        "log_prob_micro_batch_size_per_gpu": MICRO},
        },
        "critic": {"enable": False},
        "algorithm": {"adv_estimator": "repo_split", "rollout_correction": {"rollout_rs": rollout_rs}},
    })


def _run(monkeypatch, rows: dict[str, dict], config, *, skip: bool, weighting: str = "reference"):
    """The trainer's actor update over ``rows``; returns (the stand-in worker group, the step's metrics)."""
    from verl.workers.config import FSDPActorConfig, PolicyLossConfig

    store = Store(copy.deepcopy(rows))
    for name in ("kv_batch_get", "kv_batch_put", "kv_clear"):
        monkeypatch.setattr(tq, name, getattr(store, name))
    actor = config.actor_rollout_ref.actor
    actor_config = FSDPActorConfig(
        strategy="fsdp2", ppo_mini_batch_size=MINI_BATCH_ROWS, ppo_micro_batch_size_per_gpu=MICRO, rollout_n=1,
        loss_agg_mode=actor.loss_agg_mode, loss_scale_factor=actor.loss_scale_factor,
        calculate_entropy=bool(actor.calculate_entropy), policy_loss=PolicyLossConfig(loss_mode="repo"),
    )
    loss_fn = RePOLossFunction(actor_config, RePOConfig(loss_weighting=weighting, off_policy_loss_coef=0.7))
    trainer = object.__new__(RePOTrainer)
    trainer.config = copy.deepcopy(config)
    trainer.use_reference_policy = False
    trainer.skip_zero_adv_rows = skip
    trainer.tokenizer = type("Tokenizer", (), {"eos_token_id": EOS})()
    trainer.actor_rollout_wg = group = ActorGroup(store, loss_fn, TinyLM(), MICRO)
    keys = sorted(rows)
    trainer._step_state = _StepState(on_keys=[k for k in keys if not int(rows[k][OFF_POLICY_FIELD])],
                                     off_keys=[k for k in keys if int(rows[k][OFF_POLICY_FIELD])])
    tags = [{"seq_len": len(rows[k]["input_ids"]), "prompt_len": len(rows[k]["prompts"]),
             "response_len": len(rows[k]["responses"])} for k in keys]
    batch = KVBatchMeta(keys=keys, tags=tags, partition_id="train", fields=None, extra_info={})
    metrics: dict = {}
    trainer._update_actor(batch, metrics)
    assert sorted(store.rows) == keys  # the padding rows were cleared again
    return group, metrics


def _max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _assert_same_update(full: ActorGroup, skipped: ActorGroup):
    assert len(full.steps) == len(skipped.steps) == NUM_ROWS // MINI_BATCH_ROWS
    for a, b in zip(full.steps, skipped.steps, strict=True):
        for x, y in zip(a["grads"], b["grads"], strict=True):
            torch.testing.assert_close(y, x, atol=GRAD_ATOL, rtol=RTOL)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=RTOL)
        for x, y in zip(a["params"], b["params"], strict=True):
            torch.testing.assert_close(y, x, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------ the tests


CASES = [(mode, None) for mode in AGG_MODES] + [("seq-mean-token-sum-norm", 9)]


@pytest.mark.parametrize(("mode", "loss_scale_factor"), CASES, ids=[f"{m}-lsf{f}" for m, f in CASES])
def test_auto_skips_exactly_where_the_update_is_the_same(monkeypatch, mode, loss_scale_factor):
    """``auto`` on: the same update with and without skipping; ``auto`` off only for
    seq-mean-token-sum-norm without a constant ``loss_scale_factor`` (the control below shows why)."""
    config = _verl_config(mode, loss_scale_factor=loss_scale_factor)
    skip = resolve_skip_zero_advantage_rows(config, "auto")
    rows = _rows(seed=1)
    full, _ = _run(monkeypatch, rows, config, skip=False)
    skipped, metrics = _run(monkeypatch, rows, config, skip=skip)
    assert _max_diff(full.steps[-1]["params"], [p.detach() for p in TinyLM().parameters()]) > 1e-3  # the update did something
    _assert_same_update(full, skipped)
    assert skip is not (mode == "seq-mean-token-sum-norm" and loss_scale_factor is None)
    if skip:
        assert metrics["repo/skip_zero_adv_rows"] == 16
        assert sum(s["rows"] for s in skipped.steps) < sum(s["rows"] for s in full.steps)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum"])
def test_paper_weighting_per_side_counts(monkeypatch, mode):
    """The ``paper`` weighting's per-side row counts (``repo_norm_on`` / ``repo_norm_off``, written per
    mini-batch before skipping) carry into the smaller update as well."""
    config = _verl_config(mode)
    rows = _rows(seed=4)
    full, _ = _run(monkeypatch, rows, config, skip=False, weighting="paper")
    skipped, metrics = _run(monkeypatch, rows, config, skip=True, weighting="paper")
    assert metrics["repo/skip_zero_adv_rows"] == 16
    _assert_same_update(full, skipped)


def test_forced_skipping_changes_seq_mean_token_sum_norm_without_loss_scale_factor(monkeypatch):
    """Control: with verl's horizon (each micro-batch's longest response), skipping regroups rows
    and the gradient changes far beyond the tolerance; hence ``auto`` off and ``true`` refused."""
    config = _verl_config("seq-mean-token-sum-norm")
    rows = _rows(seed=1)
    full, _ = _run(monkeypatch, rows, config, skip=False)
    skipped, _ = _run(monkeypatch, rows, config, skip=True)
    # measured 2026-12-04: the grad norm 6.5% and 47% lower in the two mini-batches
    rel = max(abs(a["grad_norm"] - b["grad_norm"]) / a["grad_norm"] for a, b in zip(full.steps, skipped.steps, strict=True))
    assert rel > 0.02
    assert max(_max_diff(a["grads"], b["grads"]) for a, b in zip(full.steps, skipped.steps, strict=True)) > 1000 * GRAD_ATOL
    with pytest.raises(ValueError, match=r"skip_zero_advantage_rows=true .*loss_agg_mode=seq-mean-token-sum-norm"
                                         r".*loss_scale_factor=null"):
        resolve_skip_zero_advantage_rows(config, True)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_rejection_sampling_masks_keep_the_update(monkeypatch, mode):
    """``rollout_correction.rollout_rs`` zeroes rejected tokens in ``response_mask`` and not in
    ``loss_mask``: skipping counts the tokens verl's engine counts (``loss_mask``) and keeps rows by
    the mask the loss uses (``response_mask``), so the update stays the same."""
    lsf = 9 if mode == "seq-mean-token-sum-norm" else None
    config = _verl_config(mode, loss_scale_factor=lsf, rollout_rs="token_k1")
    assert resolve_skip_zero_advantage_rows(config, "auto") is True
    rows = _rows(seed=2, rejected=True)
    full, _ = _run(monkeypatch, rows, config, skip=False)
    skipped, metrics = _run(monkeypatch, rows, config, skip=True)
    _assert_same_update(full, skipped)
    assert metrics["repo/skip_zero_adv_rows"] == 17  # the 16 zero-advantage rows and the fully rejected row


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_entropy_metric_with_coefficient_zero(monkeypatch, mode):
    """Entropy computed, coefficient 0 (skipping stays exact): the skipping update reports no
    ``actor/entropy_loss`` (skipped rows would add no entropy but count in its normaliser) and
    ``actor/repo/entropy_updated_rows`` = the mean entropy per valid token of the rows it updated,
    computed here from the model's parameters before each mini-batch."""
    config = _verl_config(mode, calculate_entropy=True)
    assert resolve_skip_zero_advantage_rows(config, "auto") is True
    rows = _rows(seed=3)
    full, full_metrics = _run(monkeypatch, rows, config, skip=False)
    skipped, metrics = _run(monkeypatch, rows, config, skip=True)
    _assert_same_update(full, skipped)
    assert "actor/entropy_loss" in full_metrics and "actor/repo/entropy_updated_rows" not in full_metrics
    assert "actor/entropy_loss" not in metrics
    assert not any(key.startswith("actor/repo/sum/") for key in metrics)

    from repo_ext.integration.zero_adv_skip import mini_batch_members

    members = mini_batch_members(NUM_ROWS, dp_size=DP, rows_per_mini_batch=MINI_BATCH_ROWS, shuffle=False, seed=42)
    keys = sorted(rows)
    model = TinyLM()
    total = count = 0.0
    for k, member in enumerate(members):
        if k:  # parameters after the previous optimizer step
            with torch.no_grad():
                for p, value in zip(model.parameters(), full.steps[k - 1]["params"], strict=True):
                    p.copy_(value)
        for i in member:
            row = rows[keys[i]]
            if not bool(((row["advantages"] != 0) & row["response_mask"].bool()).any()):
                continue  # skipped
            mask = row["response_mask"].bool()
            total += float(model.response_entropy(row["prompts"], row["responses"])[mask].sum())
            count += float(mask.sum())
    assert metrics["actor/repo/entropy_updated_rows"] == pytest.approx(total / count, rel=1e-5)


def test_row_counts_count_rejected_rows_and_not_padding(monkeypatch):
    """The seq-mean divisor (``repo_norm_rows``) counts a row rejection sampling rejected entirely
    (``response_mask`` all 0, ``loss_mask`` not), as verl's own ``global_batch_size`` does, and not a
    padding row (both masks 0)."""
    from repo_ext.integration.mini_batch_counts import NORM_ROWS_FIELD, write_mini_batch_counts

    rows = _rows(seed=2, rejected=True)  # r11: every token rejected
    rows["r05"]["response_mask"] = torch.zeros_like(rows["r05"]["response_mask"])  # r05: padding
    rows["r05"]["loss_mask"] = torch.zeros_like(rows["r05"]["loss_mask"])
    store = Store(rows)
    monkeypatch.setattr(tq, "kv_batch_get", store.kv_batch_get)
    monkeypatch.setattr(tq, "kv_batch_put", store.kv_batch_put)
    keys = sorted(rows)
    batch = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train", fields=None, extra_info={})
    write_mini_batch_counts(batch, dp_size=DP, mini_batch_rows=MINI_BATCH_ROWS, shuffle=False, seed=42, epochs=1,
                            off_keys=set())
    # rank 0 holds rows 0-15, rank 1 rows 16-31: mini-batch 0 = rows 0-7 and 16-23 (padding r05 not
    # counted), mini-batch 1 = rows 8-15 and 24-31 (rejected r11 counted)
    for i, key in enumerate(keys):
        expected = 15 if (i % 16) < 8 else 16
        assert float(store.rows[key][NORM_ROWS_FIELD]) == expected, key
