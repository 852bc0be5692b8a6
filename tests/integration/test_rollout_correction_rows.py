"""Issue #23 finding 9: verl's rollout correction (decoupled mode) of a RePO batch covers the
on-policy rows only. Replayed rows (log-ratio exactly 0, IS weight exactly 1) enter neither the
``rollout_corr/*`` metrics nor the batch normalisation of the on-policy IS weights; they get IS
weight 1 on every response token and keep their response mask; verl's padding rows get weight 0.

The trainer's real ``_compute_advantage`` runs, verl's included, on a dict standing in for
TransferQueue (fields not carried by every requested row are left out, as TransferQueue does).
Every expected value is computed by hand below.
"""

from __future__ import annotations

import math

import pytest
import torch
import transfer_queue as tq
from omegaconf import OmegaConf
from transfer_queue import KVBatchMeta
from verl.utils import tensordict_utils as tu

from repo_ext.integration.replay_rows import OFF_POLICY_UID_SUFFIX
from repo_ext.integration.hooks.step_state import StepState as _StepState
from repo_ext.integration.trainer import RePOTrainer

# per row: uid, old log-probs, rollout log-probs, response mask, reward on the last token
ROWS = {
    "g_0_0": ("g", [-1.0, -1.0], [-1.2, -0.5], [1, 1], 1.0),  # log-ratio old - rollout: 0.2, -0.5
    "g_1_0": ("g", [-0.3], [-0.3], [1], 0.0),  # log-ratio 0
    "g_10000_0": ("g" + OFF_POLICY_UID_SUFFIX, [-2.0, -2.0, -2.0], [-2.0, -2.0, -2.0], [1, 1, 1], 1.0),  # replayed
    "g_10001_0": ("g" + OFF_POLICY_UID_SUFFIX, [-0.7], [-0.7], [1], 0.0),  # replayed
    "pad0_0_0": ("pad0", [0.0], [0.0], [0], 0.0),  # verl's padding row
}
ON, OFF, PAD = ["g_0_0", "g_1_0"], ["g_10000_0", "g_10001_0"], ["pad0_0_0"]

# by hand, over the 3 on-policy tokens (log-ratios 0.2, -0.5, 0; none clipped at 2.0):
RAW = [math.exp(0.2), math.exp(-0.5), 1.0]
ON_MEAN = sum(RAW) / 3  # 0.94264...: the batch normaliser over on-policy tokens only
KL = -(0.2 - 0.5 + 0.0) / 3  # verl's "kl": mean of rollout - old over tokens = 0.1
# with the replayed rows' 4 tokens (weight 1, log-ratio 0) it would be (sum(RAW) + 4) / 7 and 0.3 / 7
ALL_MEAN = (sum(RAW) + 4) / 7


@pytest.fixture
def store(monkeypatch):
    rows = {
        key: {
            "uid": uid,
            "old_log_probs": torch.tensor(old),
            "rollout_log_probs": torch.tensor(rollout),
            "response_mask": torch.tensor(mask, dtype=torch.int64),
            "rm_scores": torch.tensor([0.0] * (len(mask) - 1) + [reward]),
        }
        for key, (uid, old, rollout, mask, reward) in ROWS.items()
    }

    def kv_batch_get(keys, partition_id, select_fields=None):
        present = [f for f in select_fields if all(f in rows[k] for k in keys)]  # TQ leaves partial fields out
        tensors = {}
        for name in present:
            if name == "uid":
                tensors[name] = [rows[k][name] for k in keys]
            else:
                tensors[name] = torch.nested.as_nested_tensor([rows[k][name] for k in keys], layout=torch.jagged)
        return tu.get_tensordict(tensors)

    def kv_batch_put(keys, partition_id, fields=None, tags=None):
        for i, key in enumerate(keys):
            for name in fields.keys():
                rows[key][name] = fields[name][i]
        return KVBatchMeta(keys=list(keys), tags=[{} for _ in keys], partition_id=partition_id, fields=None, extra_info={})

    monkeypatch.setattr(tq, "kv_batch_get", kv_batch_get)
    monkeypatch.setattr(tq, "kv_batch_put", kv_batch_put)
    return rows


def _trainer(rollout_correction: dict) -> RePOTrainer:
    trainer = object.__new__(RePOTrainer)
    trainer.config = OmegaConf.create(
        {
            "algorithm": {
                "adv_estimator": "repo_split",
                "gamma": 1.0,
                "lam": 1.0,
                "use_kl_in_reward": False,
                "norm_adv_by_std_in_grpo": True,
                "rollout_correction": rollout_correction,
                "repo": {"strategy": "none"},  # no "without the RePO trainer" warning; grouping is the same
            },
            "actor_rollout_ref": {"rollout": {"n": 2}},
        }
    )
    trainer._step_state = _StepState(on_keys=list(ON), off_keys=list(OFF))
    return trainer


def _batch() -> KVBatchMeta:
    keys = ON + OFF + PAD
    return KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train", fields=None, extra_info={})


IS_CONFIG = {"bypass_mode": False, "rollout_is": "token", "rollout_is_threshold": 2.0,
             "rollout_is_batch_normalize": True, "rollout_rs": None, "rollout_rs_threshold": None}


def test_is_weights_normalised_over_on_policy_tokens_and_one_on_replayed_rows(store):
    metrics: dict = {}
    trainer = _trainer(IS_CONFIG)
    trainer._compute_advantage(_batch(), metrics)
    assert OmegaConf.to_container(trainer.config.algorithm.rollout_correction) == IS_CONFIG  # restored after the step
    weights = torch.cat([store[k]["rollout_is_weights"] for k in ON])
    torch.testing.assert_close(weights, torch.tensor(RAW) / ON_MEAN, rtol=1e-6, atol=0)
    for key in OFF:
        assert torch.equal(store[key]["rollout_is_weights"], torch.ones(len(ROWS[key][3])))
    assert torch.equal(store["pad0_0_0"]["rollout_is_weights"], torch.zeros(1))
    assert metrics["rollout_corr/rollout_is_batch_norm_factor"] == pytest.approx(ON_MEAN, rel=1e-6)
    assert metrics["rollout_corr/rollout_is_batch_norm_factor"] != pytest.approx(ALL_MEAN, rel=1e-3)


def test_rollout_corr_metrics_cover_on_policy_rows_only(store):
    metrics: dict = {}
    _trainer(IS_CONFIG)._compute_advantage(_batch(), metrics)
    assert metrics["rollout_corr/kl"] == pytest.approx(KL, rel=1e-5)
    assert metrics["rollout_corr/rollout_is_mean"] == pytest.approx(ON_MEAN, rel=1e-6)  # before normalising
    # per-sequence mean weight over the 2 on-policy rows: (mean(RAW[:2]) + 1) / 2, padding row not counted
    seq_mean = ((RAW[0] + RAW[1]) / 2 + 1.0) / 2
    assert metrics["rollout_corr/rollout_is_seq_mean"] == pytest.approx(seq_mean, rel=1e-6)
    # verl's perplexity of the rollout policy, the mean over the 2 on-policy rows of exp(-mean rollout log-prob)
    rollout_ppl = (math.exp((1.2 + 0.5) / 2) + math.exp(0.3)) / 2
    assert metrics["rollout_corr/rollout_ppl"] == pytest.approx(rollout_ppl, rel=1e-6)


def test_rejection_sampling_masks_on_policy_tokens_only(store):
    # token_k1 keeps a token when -log_ratio lies in [ln 0.7, ln 1.5] = [-0.357, 0.405]: rejects the
    # on-policy token with log-ratio -0.5; the replayed rows (log-ratio 0) would pass anyway, and are not asked
    config = dict(IS_CONFIG, rollout_is=None, rollout_rs="token_k1", rollout_rs_threshold="0.7_1.5")
    metrics: dict = {}
    _trainer(config)._compute_advantage(_batch(), metrics)
    assert store["g_0_0"]["response_mask"].tolist() == [1, 0]
    assert store["g_1_0"]["response_mask"].tolist() == [1]
    for key in OFF:
        assert store[key]["response_mask"].tolist() == ROWS[key][3]
        assert "rollout_is_weights" not in store[key]  # rollout_is off: no weights at all, as verl
    # the advantage of the rejected token is 0 (verl multiplies by the rejection-masked response mask):
    # on group rewards (1, 0): mean 0.5, unbiased std sqrt(0.5)
    adv = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(store["g_0_0"]["advantages"], torch.tensor([adv, 0.0]), rtol=1e-6, atol=1e-7)
    assert metrics["rollout_corr/kl"] == pytest.approx(KL, rel=1e-5)


def test_steps_without_replay_are_verls_own_pass(store):
    trainer = _trainer(IS_CONFIG)
    trainer._step_state = _StepState(on_keys=list(ON), off_keys=[])
    metrics: dict = {}
    batch = KVBatchMeta(keys=ON + PAD, tags=[{}, {}, {}], partition_id="train", fields=None, extra_info={})
    trainer._compute_advantage(batch, metrics)
    assert metrics["rollout_corr/rollout_is_batch_norm_factor"] == pytest.approx(ON_MEAN, rel=1e-6)
    assert trainer.config.algorithm.rollout_correction.rollout_is == "token"  # config left as it was
