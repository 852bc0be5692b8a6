"""verl's rollout-vs-actor and entropy metrics of the old-log-prob pass cover on-policy rows only,
also when the RePO trainer has to run that pass over all rows (TransferQueue replaced by a dict)."""

from __future__ import annotations

import math

import pytest
import torch
import transfer_queue as tq
from omegaconf import OmegaConf
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.utils import tensordict_utils as tu

from repo_ext.integration.old_log_prob_metrics import old_log_prob_metrics
from repo_ext.integration.hooks.step_state import StepState as _StepState
from repo_ext.integration.trainer import RePOTrainer

# per row: rollout log-probs, the actor's recomputed log-probs, the actor's entropy
ROWS = {
    "on1": ([-1.0, -1.0], [-1.0, -1.1], [0.5, 0.7]),
    "on2": ([-0.5], [-0.5], [0.9]),
    "off1": ([-3.0, -3.0], [-0.2, -0.2], [2.0, 2.0]),  # replayed: "rollout" = stored behaviour log-probs
}
# by hand, over on1 and on2: max |p_actor - p_rollout| = exp(-1) - exp(-1.1); token-mean entropy
ON_DIFF_MAX = math.exp(-1.0) - math.exp(-1.1)
ON_ENTROPY = (0.5 + 0.7 + 0.9) / 3
ALL_DIFF_MAX = math.exp(-0.2) - math.exp(-3.0)  # what the replayed row would report


@pytest.fixture
def store(monkeypatch):
    rows = {
        key: {
            "responses": torch.tensor([7] * len(rollout)),
            "response_mask": torch.ones(len(rollout), dtype=torch.int64),
            "rollout_log_probs": torch.tensor(rollout),
        }
        for key, (rollout, _, _) in ROWS.items()
    }

    def kv_batch_get(keys, partition_id, select_fields=None):
        return tu.get_tensordict(
            {name: torch.nested.as_nested_tensor([rows[k][name] for k in keys], layout=torch.jagged) for name in select_fields}
        )

    def kv_batch_put(keys, partition_id, fields=None, tags=None):
        for i, key in enumerate(keys):
            for name in fields.keys():
                rows[key][name] = fields[name][i]

    monkeypatch.setattr(tq, "kv_batch_get", kv_batch_get)
    monkeypatch.setattr(tq, "kv_batch_put", kv_batch_put)
    return rows


def _verl_pass(store, seen):
    """Stand-in for verl's _compute_old_log_prob: the actor's log-probs and entropy for the rows it
    is given, and its metrics over those rows (computed with verl's functions)."""

    def compute(self, batch, metrics):
        seen.append(list(batch.keys))
        for key in batch.keys:
            _, actor, entropy = ROWS[key]
            store[key]["old_log_probs"], store[key]["entropy"] = torch.tensor(actor), torch.tensor(entropy)
        metrics.update(old_log_prob_metrics(batch.keys, batch.partition_id, loss_agg_mode="token-mean",
                                            loss_scale_factor=None, with_rollout_log_probs=True))
        return batch

    return compute


def test_metrics_over_named_rows_match_hand_values(store):
    for key, (_, actor, entropy) in ROWS.items():
        store[key]["old_log_probs"], store[key]["entropy"] = torch.tensor(actor), torch.tensor(entropy)
    on = old_log_prob_metrics(["on1", "on2"], "train", loss_agg_mode="token-mean", loss_scale_factor=None,
                              with_rollout_log_probs=True)
    assert on["training/rollout_probs_diff_max"] == pytest.approx(ON_DIFF_MAX, rel=1e-5)
    assert on["actor/entropy"] == pytest.approx(ON_ENTROPY, rel=1e-6)
    every = old_log_prob_metrics(list(ROWS), "train", loss_agg_mode="token-mean", loss_scale_factor=None,
                                 with_rollout_log_probs=True)
    assert every["training/rollout_probs_diff_max"] == pytest.approx(ALL_DIFF_MAX, rel=1e-5)
    assert set(old_log_prob_metrics(["on1"], "train", loss_agg_mode="token-mean", loss_scale_factor=None,
                                    with_rollout_log_probs=False)) == {"actor/entropy"}


def _fallback_step(actor_group, algorithm=None):
    """A RePOTrainer (no __init__) at a replay step whose 2 on-policy rows are not a multiple of the
    old-log-prob micro-batch (4), so its pass would fall back to all rows; the replayed row off1
    carries its stored behaviour log-probs. Returns the trainer, the batch and off1's log-probs."""
    trainer = object.__new__(RePOTrainer)
    trainer.config = OmegaConf.create(
        {
            "algorithm": algorithm or {},
            "actor_rollout_ref": {
                "actor": {"loss_agg_mode": "token-mean", "loss_scale_factor": None, "use_dynamic_bsz": False,
                          "ppo_micro_batch_size_per_gpu": 4},
                "rollout": {"calculate_log_probs": True, "log_prob_micro_batch_size_per_gpu": 4,
                            "log_prob_use_dynamic_bsz": False},
            },
        }
    )
    trainer.use_reference_policy = False
    trainer.actor_rollout_wg = actor_group
    behaviour = torch.tensor(ROWS["off1"][0])
    trainer._step_state = _StepState(on_keys=["on1", "on2"], off_keys=["off1"], off_behaviour={"off1": behaviour})
    batch = KVBatchMeta(keys=list(ROWS), tags=[{}, {}, {}], partition_id="train", fields=None, extra_info={})
    return trainer, batch, behaviour


def test_fallback_over_all_rows_reports_on_policy_rows_only(store, monkeypatch):
    seen = []
    monkeypatch.setattr(PPOTrainer, "_compute_old_log_prob", _verl_pass(store, seen))

    class ActorGroup:
        _dispatch_info = {"actor": [0]}

    trainer, batch, behaviour = _fallback_step(ActorGroup())
    metrics = {}
    trainer._compute_old_log_prob(batch, metrics)

    assert seen == [list(ROWS)]  # the forward pass ran over all rows (the fallback)
    assert metrics["training/rollout_probs_diff_max"] == pytest.approx(ON_DIFF_MAX, rel=1e-5)
    assert metrics["actor/entropy"] == pytest.approx(ON_ENTROPY, rel=1e-6)
    # the replayed row's old log-probs are its stored behaviour log-probs, not the actor's
    assert torch.equal(store["off1"]["old_log_probs"], behaviour)
    assert torch.equal(store["on1"]["old_log_probs"], torch.tensor(ROWS["on1"][1]))


def test_bypass_mode_runs_no_forward_and_needs_no_entropy(store):
    """Issue #23 finding 1: in bypass mode (algorithm.rollout_correction.bypass_mode=true) verl's own
    pass copies rollout log-probs into old log-probs and computes no entropy. With on-policy rows that
    are not a multiple of the micro-batch (the fallback's case), no forward pass may run and nothing
    may read ``entropy`` (it raised KeyError 'entropy'). Old log-probs: rollout ones on on-policy rows,
    stored ones on the replayed row."""
    class ActorGroup:
        _dispatch_info = {"actor": [0]}

        def compute_log_prob(self, batch):
            raise AssertionError("bypass mode ran an old-log-prob forward pass")

    # a replayed row's rollout log-probs are its stored ones
    trainer, batch, behaviour = _fallback_step(ActorGroup(), algorithm={"rollout_correction": {"bypass_mode": True}})
    metrics = {}
    trainer._compute_old_log_prob(batch, metrics)

    for key in ("on1", "on2"):
        assert torch.equal(store[key]["old_log_probs"], torch.tensor(ROWS[key][0]))
    assert torch.equal(store["off1"]["old_log_probs"], behaviour)
    assert not any("entropy" in row for row in store.values())
    assert "actor/entropy" not in metrics
