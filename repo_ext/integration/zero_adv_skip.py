"""Zero-advantage rows leave the actor update; the update stays the same update.

``algorithm.repo.skip_zero_advantage_rows`` (auto | true | false). A row whose advantage is 0 on
every valid token contributes exactly nothing to the clipped-surrogate gradient (``-0 * ratio`` and
its clipped and dual-clipped forms are all 0, and the ratio is finite because the log-ratio is
clamped). It still costs a forward and a backward pass. This module takes such rows out of the
actor update without changing it:

1. **Mini-batch membership as verl assigns it.** verl's ``update_actor`` hands rank ``r`` the
   ``r``-th contiguous chunk of the batch (``KVBatchMeta.chunk``) and each rank iterates its chunk in
   mini-batches with ``tensordict_utils.make_iterator`` (shuffled when ``actor.shuffle``, seed
   ``actor.data_loader_seed + r``). :func:`mini_batch_members` runs that very iterator on row
   indices, so optimizer step ``k`` gets the rows it would get without skipping.
2. **Normalisers as if nothing were skipped.** Per mini-batch, the tokens the engine counts for
   token-mean's ``batch_num_tokens`` (``loss_mask``, all ranks; the loss itself masks with
   ``response_mask``, which rollout correction's rejection sampling rewrites and ``loss_mask`` keeps:
   :func:`row_skip_inputs`) and the row count verl passes as ``global_batch_size``
   (seq-mean-*) are written on every row (:data:`MB_TOKENS_FIELD`, :data:`MB_ROWS_FIELD`); the
   ``paper`` weighting's per-side counts are per-row fields already. The actor's loss function
   (``estimators.RePOLossFunction``) puts the carried values in place of the ones the engine
   computes from the smaller batch (:func:`apply_carried_normalisers`).
3. **The smaller batch.** Each mini-batch keeps its rows that have a non-zero advantage, is padded
   with 2-token rows whose response mask is zero (they contribute exactly 0) to a common size that
   is a multiple of dp x micro-batch size, and the rows are laid out so that verl's contiguous
   chunking, without shuffling, gives every rank its share of mini-batch ``k`` as its ``k``-th
   mini-batch. A mini-batch whose rows are all skipped keeps its padding rows: the optimizer still
   steps (AdamW's momentum and weight decay move parameters even when the gradient is 0; with no
   forward pass at all the gradients would be None and AdamW would skip those parameters).
   Gradient clipping sees the same norm because the gradient is the same.

Exact only when the loss has no term on zero-advantage rows: no KL loss, entropy coefficient 0, the
``repo`` clipped surrogate (the RePO trainer has no critic and no other loss: ``config_checks``
refuses both before this module runs), and the same mini-batches in every epoch
(``ppo_epochs == 1`` or no shuffling); and when no normaliser depends on which rows share a
micro-batch: ``seq-mean-token-sum-norm`` without ``actor.loss_scale_factor`` divides each
micro-batch's loss by that micro-batch's longest response (verl/trainer/ppo/core_algos.py
``agg_loss``: ``loss_mask.shape[-1]`` of the micro-batch padded to its longest row), which the
regrouping changes; with a constant ``loss_scale_factor`` it is exact. ``auto`` skips exactly then;
``true`` with a conflicting setting is a start-up error (:func:`resolve_skip_zero_advantage_rows`).

The only difference left is float summation order: rows are grouped into different micro-batches,
so per-micro-batch sums and gradient accumulation add the same terms in another order.

This module plans and builds rows; the trainer side (reading the batch from TransferQueue, writing
the smaller batch, running verl's update on it) is ``integration/hooks/skip_zero_adv_rows.py``.

Metrics. Per step: ``repo/skip_zero_adv_rows`` and ``repo/skip_zero_adv_tokens`` (left out),
``repo/update_rows`` and ``repo/update_tokens`` (went through forward and backward),
``repo/skip_padding_rows`` (2-token rows added) and ``repo/skip_plan_s`` (this module's own time,
inside verl's ``timing_s/update_actor``, which therefore still times the whole update). The loss's
own metrics (``actor/repo/*``, ``actor/pg_clipfrac``, ``actor/ppo_kl``, ...) describe the rows that
went through the update; ``actor/pg_loss`` and ``actor/grad_norm`` are unchanged (skipped rows add 0).
verl's ``actor/entropy_loss`` (entropy computed with coefficient 0) would not be: skipped rows add no
entropy but count in its normaliser. A skipping update reports ``actor/repo/entropy_updated_rows``
(mean entropy per token of the rows it updated) in its place (:func:`report_updated_rows_entropy`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

SETTING = "algorithm.repo.skip_zero_advantage_rows"
#: valid tokens of the row's optimizer mini-batch (all ranks) had no row been skipped
MB_TOKENS_FIELD = "repo_mb_num_tokens"
#: rows verl passes as ``global_batch_size`` for the row's mini-batch had no row been skipped
MB_ROWS_FIELD = "repo_mb_global_rows"
#: policy losses whose per-token loss is exactly 0 where the advantage is 0 (the RePO trainer runs
#: only ``repo``: config_checks.check_repo_trainer_requirements)
EXACT_LOSS_MODES = ("repo",)
#: prompt + response tokens of a padding row (one each: verl's log-prob slicing needs a prompt token)
PADDING_SEQ_LEN = 2


# ---------------------------------------------------------------------------------------- settings


def skip_conflicts(config: Any) -> list[str]:
    """Settings of ``config`` (verl's full config) under which skipping would change the update.

    Each entry names the setting, its value and why, e.g.
    ``"actor_rollout_ref.actor.use_kl_loss=True (the KL loss has a gradient on every row)"``.
    """
    actor = config.actor_rollout_ref.actor
    found = []
    if bool(actor.get("use_kl_loss", False)):
        found.append("actor_rollout_ref.actor.use_kl_loss=True (the KL loss has a gradient on every row)")
    entropy_coeff = float(actor.get("entropy_coeff", 0.0) or 0.0)
    if entropy_coeff != 0.0:
        found.append(
            f"actor_rollout_ref.actor.entropy_coeff={entropy_coeff:g} (the entropy bonus has a gradient on every row)"
        )
    loss_mode = str(actor.get("policy_loss", {}).get("loss_mode", "vanilla"))
    if loss_mode not in EXACT_LOSS_MODES:
        found.append(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode} (only {', '.join(EXACT_LOSS_MODES)} are known "
            "to give a zero loss on zero-advantage rows)"
        )
    agg_mode = str(actor.get("loss_agg_mode", "token-mean"))
    if agg_mode == "seq-mean-token-sum-norm" and actor.get("loss_scale_factor", None) is None:
        found.append(
            "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm with "
            "actor_rollout_ref.actor.loss_scale_factor=null (verl then divides each micro-batch's loss by that "
            "micro-batch's longest response, and skipping regroups rows into other micro-batches; set "
            "actor_rollout_ref.actor.loss_scale_factor to a constant, e.g. the rollout's response_length, to skip "
            "exactly)"
        )
    epochs = int(actor.get("ppo_epochs", 1) or 1)
    if epochs > 1 and bool(actor.get("shuffle", False)):
        found.append(
            f"actor_rollout_ref.actor.shuffle=True with actor_rollout_ref.actor.ppo_epochs={epochs} "
            "(mini-batches are drawn anew each epoch)"
        )
    return found


def resolve_skip_zero_advantage_rows(config: Any, setting: str | bool) -> bool:
    """Whether the actor update skips zero-advantage rows.

    ``setting`` is the validated ``RePOConfig.skip_zero_advantage_rows`` ("auto", True or False).
    ``auto``: yes exactly when :func:`skip_conflicts` finds nothing; False: no; True: yes, and a
    ValueError naming every conflicting setting when skipping would change the update.
    """
    value = setting
    if value is False:
        return False
    conflicts = skip_conflicts(config)
    if value == "auto":
        if conflicts:
            logger.info("%s=auto: not skipping zero-advantage rows because of %s", SETTING, "; ".join(conflicts))
        return not conflicts
    if conflicts:
        raise ValueError(
            f"{SETTING}=true would change the actor update: {'; '.join(conflicts)}. Set {SETTING}=auto "
            "(skips only where the update stays exact) or false, or change the conflicting setting."
        )
    return True


# ---------------------------------------------------------------------------------------- planning


def mini_batch_members(
    num_rows: int, *, dp_size: int, rows_per_mini_batch: int, shuffle: bool, seed: int
) -> list[list[int]]:
    """Row indices (into the batch as sent to ``update_actor``) of each optimizer mini-batch, all ranks.

    Reproduces verl's assignment by running verl's own pieces on row indices: rank ``r`` holds the
    ``r``-th contiguous chunk (``KVBatchMeta.chunk``), iterated by ``tensordict_utils.make_iterator``
    with ``rows_per_mini_batch / dp_size`` rows per mini-batch and seed ``seed + r``
    (``TrainingWorker.train_mini_batch``). Returns the first epoch's mini-batches in step order.
    """
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    if dp_size < 1 or rows_per_mini_batch < 1 or rows_per_mini_batch % dp_size:
        raise ValueError(f"rows_per_mini_batch={rows_per_mini_batch} must be a positive multiple of dp_size={dp_size}")
    if num_rows % rows_per_mini_batch:
        raise ValueError(f"num_rows={num_rows} must be a multiple of rows_per_mini_batch={rows_per_mini_batch}")
    per_rank = num_rows // dp_size
    members: list[list[int]] = [[] for _ in range(num_rows // rows_per_mini_batch)]
    for rank in range(dp_size):
        rows = TensorDict({"row": torch.arange(rank * per_rank, (rank + 1) * per_rank)}, batch_size=[per_rank])
        iterator = tu.make_iterator(
            rows,
            mini_batch_size=rows_per_mini_batch // dp_size,
            epochs=1,
            seed=seed + rank,
            dataloader_kwargs={"shuffle": bool(shuffle)},
        )
        for k, mini_batch in enumerate(iterator):
            members[k].extend(int(i) for i in mini_batch["row"].tolist())
    return members


@dataclass
class SkipPlan:
    """The smaller update batch.

    Attributes:
        layout: the new batch in order: an original row index, or ``-1 - k`` for a padding row of
            mini-batch ``k``. Rank ``r``'s contiguous chunk holds, for k = 0, 1, ..., its share of
            mini-batch ``k``.
        rows_per_mini_batch: rows of every new mini-batch (all ranks), padding included.
        mini_batch_of: mini-batch index of every original row.
        mini_batch_tokens: per mini-batch, valid tokens of all its original rows.
        mini_batch_rows: per mini-batch, its original row count (verl's ``global_batch_size``).
        skipped_rows, skipped_tokens: rows with valid tokens left out, and their valid tokens.
        dropped_padding_rows: rows without a valid token left out (verl's own padding rows).
        updated_rows, updated_tokens: rows kept and their valid tokens.
        padding_rows: padding rows added.
    """

    layout: list[int]
    rows_per_mini_batch: int
    mini_batch_of: list[int]
    mini_batch_tokens: list[int]
    mini_batch_rows: list[int]
    skipped_rows: int
    skipped_tokens: int
    dropped_padding_rows: int
    updated_rows: int
    updated_tokens: int
    padding_rows: int

    @staticmethod
    def unskipped_metrics(valid_tokens: Sequence[int]) -> dict[str, float]:
        """The metrics of an update that skipped nothing (every row with a valid token updated)."""
        return {
            "repo/skip_zero_adv_rows": 0.0,
            "repo/skip_zero_adv_tokens": 0.0,
            "repo/update_rows": float(sum(1 for t in valid_tokens if t > 0)),
            "repo/update_tokens": float(sum(valid_tokens)),
            "repo/skip_padding_rows": 0.0,
        }

    def metrics(self) -> dict[str, float]:
        """Per step: rows and tokens skipped, rows and tokens updated, padding rows added."""
        return {
            "repo/skip_zero_adv_rows": float(self.skipped_rows),
            "repo/skip_zero_adv_tokens": float(self.skipped_tokens),
            "repo/update_rows": float(self.updated_rows),
            "repo/update_tokens": float(self.updated_tokens),
            "repo/skip_padding_rows": float(self.padding_rows),
        }


def row_skip_inputs(advantages: Any, response_mask: Any, loss_mask: Any) -> tuple[list[bool], list[int]]:
    """Per row: (advantage non-zero on a token the loss uses, tokens the engine's normaliser counts).

    Args:
        advantages, response_mask, loss_mask: one entry per row, each (L_i,) (jagged nested tensors
            as TransferQueue returns them, or padded (B, T) tensors).

    verl's ``ppo_loss`` masks every per-token term with ``response_mask``, while its engine counts
    token-mean's ``batch_num_tokens`` over ``loss_mask`` (verl/workers/engine/fsdp/transformer_impl.py
    ``forward_backward_batch``). The two are equal on every row verl 0.9.1 builds (agent_loop_tq,
    padding_utils; replayed rows: replay_rows) until rollout correction's rejection sampling
    (``algorithm.rollout_correction.rollout_rs``) zeroes rejected tokens in ``response_mask`` only
    (verl/trainer/ppo/rollout_corr_helper.py ``compute_rollout_correction_and_add_to_batch``).
    Rejected tokens then add nothing to the loss but still count in verl's divisor, so a row is
    kept by its ``response_mask`` and counted by its ``loss_mask``.
    """
    nonzero, valid_tokens = [], []
    rows = zip(advantages.unbind(), response_mask.unbind(), loss_mask.unbind(), strict=True)
    for adv, mask, counted in rows:
        nonzero.append(bool(((adv != 0) & mask.bool()).any()))
        valid_tokens.append(int(counted.bool().sum()))
    return nonzero, valid_tokens


def plan_zero_advantage_skip(
    nonzero: Sequence[bool],
    valid_tokens: Sequence[int],
    members: list[list[int]],
    *,
    dp_size: int,
    row_multiple: int,
    seq_lens: Sequence[int] | None = None,
) -> SkipPlan:
    """Plan the update without the rows whose advantage is zero.

    Args:
        nonzero: per original row, whether its advantage is non-zero on some token of the mask the
            policy loss uses (``response_mask``; :func:`row_skip_inputs`). Exactly these rows are kept.
        valid_tokens: per original row, the tokens the engine counts for token-mean's
            ``batch_num_tokens`` (``loss_mask``; :func:`row_skip_inputs`).
        members: original row indices of each mini-batch (:func:`mini_batch_members`).
        dp_size: data-parallel ranks.
        row_multiple: every new mini-batch's rows are a multiple of this (dp x micro-batch size,
            ``batch_layout.row_multiple``); a multiple of ``dp_size``.
        seq_lens: per original row, prompt + response tokens; used to balance each mini-batch's
            rows over the ranks by workload as verl's ``_balance_batch`` does (None: no balancing).

    Returns:
        a :class:`SkipPlan`. Every mini-batch gets the same number of rows, at least
        ``row_multiple`` (an all-skipped mini-batch is all padding, so the optimizer still steps).
    """
    if row_multiple < 1 or row_multiple % dp_size:
        raise ValueError(f"row_multiple={row_multiple} must be a positive multiple of dp_size={dp_size}")
    num_rows = len(nonzero)
    if len(valid_tokens) != num_rows or sorted(i for m in members for i in m) != list(range(num_rows)):
        raise ValueError("members must partition the rows, and nonzero/valid_tokens need one entry per row")
    mini_batch_of = [0] * num_rows
    for k, rows in enumerate(members):
        for i in rows:
            mini_batch_of[i] = k
    kept = [[i for i in rows if nonzero[i]] for rows in members]
    size = max(row_multiple, math.ceil(max(len(rows) for rows in kept) / row_multiple) * row_multiple)
    share = size // dp_size
    per_rank: list[list[int]] = [[] for _ in range(dp_size)]
    for k, rows in enumerate(kept):
        entries = rows + [-1 - k] * (size - len(rows))
        for rank, part in enumerate(_split_over_ranks(entries, dp_size, share, seq_lens)):
            per_rank[rank].extend(part)
    dropped = [i for i in range(num_rows) if not nonzero[i]]
    skipped = [i for i in dropped if valid_tokens[i] > 0]
    updated = [i for rows in kept for i in rows]
    return SkipPlan(
        layout=[entry for part in per_rank for entry in part],
        rows_per_mini_batch=size,
        mini_batch_of=mini_batch_of,
        mini_batch_tokens=[int(sum(valid_tokens[i] for i in rows)) for rows in members],
        mini_batch_rows=[len(rows) for rows in members],
        skipped_rows=len(skipped),
        skipped_tokens=int(sum(valid_tokens[i] for i in skipped)),
        dropped_padding_rows=len(dropped) - len(skipped),
        updated_rows=len(updated),
        updated_tokens=int(sum(valid_tokens[i] for i in updated)),
        padding_rows=len(kept) * size - len(updated),
    )


def _split_over_ranks(
    entries: list[int], dp_size: int, share: int, seq_lens: Sequence[int] | None
) -> list[list[int]]:
    """``entries`` (rows or padding) split into dp_size parts of ``share`` each, workload-balanced."""
    if dp_size == 1 or seq_lens is None:
        return [entries[r * share : (r + 1) * share] for r in range(dp_size)]
    from verl.utils.seqlen_balancing import calculate_workload, get_seqlen_balanced_partitions

    lens = torch.tensor([seq_lens[e] if e >= 0 else PADDING_SEQ_LEN for e in entries], dtype=torch.int64)
    parts = get_seqlen_balanced_partitions(calculate_workload(lens), k_partitions=dp_size, equal_size=True)
    return [[entries[j] for j in sorted(part)] for part in parts]


# ---------------------------------------------------------------------------------------- rows


#: per-response-token fields of a row at the actor update ((L_response, ...) each): one zero on a
#: padding row. Written by verl's agent loop and reward (rm_scores, rollout_log_probs), its
#: old-log-prob and ref passes (old_log_probs, entropy, ref_log_prob) and _compute_advantage
#: (advantages, returns, token_level_rewards, rollout_is_weights); verl/trainer/ppo/v1/trainer_base.py.
RESPONSE_TOKEN_FIELDS = (
    "rm_scores",
    "rollout_log_probs",
    "old_log_probs",
    "entropy",
    "ref_log_prob",
    "advantages",
    "returns",
    "token_level_rewards",
    "rollout_is_weights",
)
#: per-token fields over the whole sequence (prompt + response): ``PADDING_SEQ_LEN`` zeros. The
#: engine's ``log_probs`` from the old-log-prob pass (verl's compute_log_prob output).
SEQUENCE_TOKEN_FIELDS = ("log_probs",)


def padding_row(template: dict[str, Any], eos_token_id: int) -> dict[str, Any]:
    """A 2-token row (one prompt, one response token) with a zero response mask, from a real row.

    Every field of ``template`` is kept (TransferQueue returns only fields every row has): the
    token fields are rebuilt, the :data:`RESPONSE_TOKEN_FIELDS` become one zero, the
    :data:`SEQUENCE_TOKEN_FIELDS` two zeros, and every other field is copied: per-row values such as
    the flags and normalisers of the template's mini-batch, verl's dataset's ``dummy_tensor`` (1,),
    the dataset's non-tensor fields. A tensor with more than one entry along its first axis that is in
    neither list is an error naming it (a token axis whose padding value is not known here).
    """
    from verl.trainer.ppo.padding_utils import build_padding_position_ids, build_padding_routed_experts

    ids = torch.full((PADDING_SEQ_LEN,), int(eos_token_id), dtype=torch.int64)
    attention_mask = torch.ones(PADDING_SEQ_LEN, dtype=torch.int64)
    rebuilt = {
        "prompts": ids[:1].clone(),
        "responses": ids[1:].clone(),
        "input_ids": ids,
        "attention_mask": attention_mask,
        "position_ids": build_padding_position_ids(template.get("position_ids"), attention_mask),
        "response_mask": torch.zeros(1, dtype=torch.int64),
        "num_turns": 0,
    }
    if "loss_mask" in template:
        rebuilt["loss_mask"] = torch.zeros(1, dtype=template["loss_mask"].dtype)
    routed = build_padding_routed_experts(template.get("routed_experts"), PADDING_SEQ_LEN)
    if routed is not None:
        rebuilt["routed_experts"] = routed
    row = {}
    for name, value in template.items():
        if name in rebuilt:
            row[name] = rebuilt[name]
        elif name in RESPONSE_TOKEN_FIELDS:
            row[name] = torch.zeros((1, *value.shape[1:]), dtype=value.dtype)
        elif name in SEQUENCE_TOKEN_FIELDS:
            row[name] = torch.zeros((PADDING_SEQ_LEN, *value.shape[1:]), dtype=value.dtype)
        elif isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] > 1:
            # a per-row value is 0-d or has one entry (verl's dummy_tensor, (1,)); more entries along the
            # first axis means a token axis, whose padding value is not known here: copying the template's
            # would give the padding row a field as long as another row's tokens
            raise ValueError(
                f"{SETTING}: the update batch has a field {name!r} of shape {tuple(value.shape)} that a padding row "
                "cannot fill (not a per-row value, and not in zero_adv_skip.RESPONSE_TOKEN_FIELDS or "
                f"SEQUENCE_TOKEN_FIELDS). Set {SETTING}=false, or add the field to the list of its kind."
            )
        else:
            row[name] = value.clone() if isinstance(value, torch.Tensor) else value
    return row


def carried_normalisers(plan: SkipPlan, mini_batch: int) -> dict[str, torch.Tensor]:
    """The fields every row of ``mini_batch`` carries into the smaller update."""
    return {
        MB_TOKENS_FIELD: torch.tensor(plan.mini_batch_tokens[mini_batch], dtype=torch.int64),
        MB_ROWS_FIELD: torch.tensor(plan.mini_batch_rows[mini_batch], dtype=torch.int64),
    }


def layout_padding_rows(plan: SkipPlan, templates: Sequence[dict[str, Any]], eos_token_id: int) -> list[dict[str, Any]]:
    """The padding rows of ``plan.layout``, in layout order.

    ``templates[k]`` is a real row of mini-batch ``k`` (all fields); a padding row of mini-batch
    ``k`` is :func:`padding_row` of it plus :func:`carried_normalisers`.
    """
    rows = []
    for entry in plan.layout:
        if entry < 0:
            row = padding_row(templates[-1 - entry], eos_token_id)
            row.update(carried_normalisers(plan, -1 - entry))
            rows.append(row)
    return rows


def apply_carried_normalisers(data: Any) -> None:
    """In the actor's loss: use the normalisers carried by the rows, when they carry them.

    ``data`` is one micro-batch (a TensorDict). Sets its ``batch_num_tokens`` and
    ``global_batch_size`` (read by verl's ``ppo_loss``) to the values of the rows' mini-batch had no
    row been skipped. All rows of a micro-batch belong to one mini-batch; anything else is an error.
    """
    if MB_TOKENS_FIELD not in data.keys():
        return
    from verl.utils import tensordict_utils as tu

    tokens = torch.as_tensor(data[MB_TOKENS_FIELD]).reshape(-1)
    rows = torch.as_tensor(data[MB_ROWS_FIELD]).reshape(-1)
    if bool((tokens != tokens[0]).any()) or bool((rows != rows[0]).any()):
        raise RuntimeError(
            f"{SETTING}: one micro-batch holds rows of different mini-batches ({MB_TOKENS_FIELD}="
            f"{sorted(set(tokens.tolist()))}); the update batch was not laid out by zero_adv_skip"
        )
    tu.assign_non_tensor(data, batch_num_tokens=int(tokens[0]), global_batch_size=int(rows[0]))


def report_updated_rows_entropy(model_output: dict, data: Any, metrics: dict) -> dict:
    """In the actor's loss, after verl's ``ppo_loss``: the entropy metric of a skipping update.

    verl reports ``actor/entropy_loss`` (when it computes entropy: ``actor.calculate_entropy``)
    as the entropy of the micro-batch's rows divided by the mini-batch's normaliser. In an update
    that skipped rows, the normaliser counts the skipped rows (:func:`apply_carried_normalisers`)
    but the skipped rows had no forward pass and add no entropy, so the value would be low by the
    skipped share. Such a micro-batch (its rows carry :data:`MB_TOKENS_FIELD`) therefore reports no
    ``actor/entropy_loss``; it reports the sum of its rows' entropy over their valid
    (``response_mask``) tokens and the count of those tokens instead, which the trainer turns into
    ``actor/repo/entropy_updated_rows`` (``loss.OPTIONAL_SUM_METRICS``): the mean entropy per token
    of the rows that went through the update, whatever ``loss_agg_mode``. Padding rows add 0 to both.
    Entropy over every row of the step: verl's ``actor/entropy`` of the old-log-prob pass.

    Args:
        model_output: the engine's output for the micro-batch; ``"entropy"`` in verl's no-padding
            layout (flat over the micro-batch's tokens, or jagged) when entropy was computed.
        data: the micro-batch (TensorDict with ``prompts``, ``responses``, ``response_mask``).
        metrics: ``ppo_loss``'s metrics, changed in place and returned.
    """
    if MB_TOKENS_FIELD not in data.keys() or "actor/entropy_loss" not in metrics:
        return metrics
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.utils.padding import no_padding_2_padding

    from repo_ext.algorithm.loss import OPTIONAL_SUM_METRICS

    entropy = no_padding_2_padding(model_output["entropy"], data).detach()
    mask = data.select("response_mask").to_padded_tensor()["response_mask"].bool()
    total_key, count_key = OPTIONAL_SUM_METRICS["repo/entropy_updated_rows"]
    del metrics["actor/entropy_loss"]
    metrics[total_key] = Metric(AggregationType.SUM, float((entropy * mask).sum()))
    metrics[count_key] = Metric(AggregationType.SUM, float(mask.sum()))
    return metrics
