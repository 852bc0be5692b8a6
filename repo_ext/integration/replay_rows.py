"""Turning replay-store entries into rows of verl's V1 batch, and back.

verl's V1 trainer keeps one row per trajectory in TransferQueue (TQ): unpadded 1-D tensors per
field (``prompts``, ``responses``, ``response_mask``, ``input_ids``, ``position_ids``, ``rm_scores``,
...) plus the dataset row's non-tensor fields (``uid``, ``data_source``, ``reward_model``, ...).
A replayed response becomes a full row by copying an on-policy row of the same prompt (so every
prompt-side field, and every field verl or a custom reward added, is present: TQ silently drops
fields that not every row carries) and replacing the response-side fields. This mirrors what
verl itself does for its synthetic padding rows (verl/trainer/ppo/padding_utils.py,
``construct_minimal_padding_template``).

Every row of a RePO batch carries the same extra fields:
- ``repo_off_policy``: 1 for a replayed row, 0 for an on-policy (or padding) row;
- ``repo_norm_on`` / ``repo_norm_off``: the on/off row counts used by the ``paper`` loss weighting,
  per mini-batch, written before the actor update (``mini_batch_counts.write_mini_batch_counts``).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import numpy as np
import torch

from repo_ext.algorithm.store import ReplayEntry

#: Appended to verl's per-step ``uid`` on replayed rows. verl hands an advantage estimator only the
#: uid array (``index``), never the batch, so this suffix is how ``repo_split`` tells replayed rows
#: from on-policy rows and builds its separate groups.
OFF_POLICY_UID_SUFFIX = "::repo_replay"

#: Session ids of replayed rows start here: the j-th replayed row of a prompt group is session
#: ``REPLAY_SESSION_BASE + j``. On-policy rows are sessions 0 .. rollout.n - 1 (verl's agent loop),
#: so a replayed row is recognisable by its session id alone.
REPLAY_SESSION_BASE = 10_000

OFF_POLICY_FIELD = "repo_off_policy"
NORM_ON_FIELD = "repo_norm_on"
NORM_OFF_FIELD = "repo_norm_off"
REPO_ROW_FIELDS = (OFF_POLICY_FIELD, NORM_ON_FIELD, NORM_OFF_FIELD)


def prompt_key(prompt_ids: torch.Tensor | np.ndarray) -> str:
    """Stable identity of a prompt: a hash of its token ids.

    verl's ``uid`` is a fresh uuid every step, and the dataset index changes meaning when a user
    swaps the data file; the prompt's token ids are what the policy actually conditions on, so two
    rows with the same ids share one replay buffer across steps and epochs.
    """
    ids = np.asarray(prompt_ids.detach().cpu().numpy() if isinstance(prompt_ids, torch.Tensor) else prompt_ids)
    return hashlib.blake2b(ids.astype(np.int64).tobytes(), digest_size=16).hexdigest()


def split_uid(uid: str) -> tuple[str, bool]:
    """``(group uid, is_off_policy)`` of a row's uid as written by :func:`build_replay_row`."""
    if uid.endswith(OFF_POLICY_UID_SUFFIX):
        return uid[: -len(OFF_POLICY_UID_SUFFIX)], True
    return uid, False


def replay_row_key(uid: str, j: int) -> str:
    """TransferQueue key of the j-th replayed row of the group ``uid``.

    verl's key format is ``{uid}_{session_id}_{index}`` with integer session id and index: the V1
    trainer parses it (``rsplit("_", 2)`` and ``int``) when it dumps rollouts
    (``trainer.rollout_data_dir``), validates and groups multi-output agent loops. A replayed row is
    session ``REPLAY_SESSION_BASE + j``, output 0.
    """
    if j < 0:
        raise ValueError(f"replayed row index must be >= 0, got {j}")
    return f"{uid}_{REPLAY_SESSION_BASE + j}_0"


def is_replay_row_key(key: str) -> bool:
    """Whether a TQ key in verl's format was made by :func:`replay_row_key`."""
    parts = key.rsplit("_", 2)
    return len(parts) == 3 and parts[1].isdigit() and int(parts[1]) >= REPLAY_SESSION_BASE


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def build_replay_row(template: dict[str, Any], entry: ReplayEntry, session_id: int) -> dict[str, Any]:
    """One TQ row for a replayed response, from an on-policy row of the same prompt.

    Args:
        template: every field of one on-policy row (as returned by ``tq.kv_batch_get(...)[0]``).
        entry: the stored response: token ids (L,), behaviour log-probs (L,), reward, step, loss mask (L,).
        session_id: a session number unused by the on-policy rows of this prompt.

    The row's ``response_mask`` and ``loss_mask`` (verl's V1 agent loop writes both, equal) are the
    stored loss mask exactly: a multi-turn response's tool tokens stay out of the loss, as they
    were in the on-policy row it was stored from. ``attention_mask`` covers every token (tool
    tokens included: the policy conditions on them) and ``position_ids`` count 0..len-1, as verl's
    agent loop writes them for an on-policy text row. The stored reward goes on the last response
    token (``rm_scores``), as verl's agent loop does, and the stored behaviour log-probs also fill
    ``rollout_log_probs`` so that verl's rollout-correction bypass mode (which uses them as old
    log-probs) agrees with RePO.
    """
    row = {key: _clone(value) for key, value in template.items()}
    if row.get("multi_modal_inputs"):
        raise ValueError(
            "RePO replay supports text-only rows; this prompt carries multi_modal_inputs. "
            "Set algorithm.repo.strategy=none for multi-modal data."
        )
    prompts = row["prompts"]
    responses = torch.as_tensor(entry.response_ids, dtype=prompts.dtype)
    input_ids = torch.cat([prompts, responses])
    attention_mask = torch.ones_like(input_ids, dtype=torch.int64)
    response_mask = torch.as_tensor(entry.loss_mask, dtype=torch.int64)
    rm_scores = torch.zeros(responses.shape[0], dtype=torch.float32)
    rm_scores[-1] = float(entry.reward)
    behaviour = torch.as_tensor(entry.behaviour_log_probs, dtype=torch.float32)

    old_pos = row.get("position_ids")
    position_ids = torch.arange(input_ids.shape[0], dtype=torch.int64)
    if isinstance(old_pos, torch.Tensor):
        if old_pos.dim() > 1:
            raise ValueError(
                "RePO replay supports 1-D position ids (text models); got position_ids of shape "
                f"{tuple(old_pos.shape)}. Set algorithm.repo.strategy=none for this model."
            )
        position_ids = position_ids.to(old_pos.dtype)

    row.update(
        responses=responses,
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        response_mask=response_mask,
        loss_mask=response_mask.clone(),
        rm_scores=rm_scores,
        rollout_log_probs=behaviour.clone(),
    )
    if "num_turns" in row:
        row["num_turns"] = 2
    row.pop("routed_experts", None)
    if "session_id" in row:
        row["session_id"] = session_id
    row["uid"] = f"{row['uid']}{OFF_POLICY_UID_SUFFIX}"
    row[OFF_POLICY_FIELD] = torch.tensor(1, dtype=torch.int64)
    return row


def response_order_key(response: torch.Tensor, response_mask: torch.Tensor, seed: int) -> bytes:
    """A seeded hash of one response (its token ids and its loss mask): 8 bytes, compared as bytes.

    Keyed BLAKE2b of the ids as int64 and the mask as int8, the key being ``seed`` (int in
    [0, 2**64)) as 8 little-endian bytes. Equal responses get equal keys in every run and on every
    machine; otherwise the order of two keys is unrelated to the content's own order (lexicographic,
    length, reward), and changes with the seed.
    """
    ids = response.detach().cpu().numpy().astype("<i8").tobytes()
    mask = response_mask.detach().cpu().numpy().astype("i1").tobytes()
    digest = hashlib.blake2b(key=int(seed).to_bytes(8, "little"), digest_size=8)
    digest.update(len(ids).to_bytes(8, "little"))  # the boundary between ids and mask
    digest.update(ids)
    digest.update(mask)
    return digest.digest()


def canonical_insert_order(
    prompt_keys: list[str],
    responses: list[torch.Tensor] | tuple[torch.Tensor, ...],
    response_masks: list[torch.Tensor] | tuple[torch.Tensor, ...],
    seed: int,
) -> list[int]:
    """Row indices in the order one step's on-policy rows go into the store: rows keep their place
    relative to other prompts' rows, and a prompt's own rows are sorted by
    :func:`response_order_key` with ``seed`` (``algorithm.repo.seed``); equal responses keep their
    row order.

    verl's rollout hands a group's responses to its rows in the order the requests were served, so
    the same responses can come back in another order in another run; the store's FIFO order (and
    with it which samples ``recent_k`` and the ties of ``highest_k``/``max_variance_k`` pick, and
    which FIFO eviction drops first) then follows the responses, not the timing. A seeded hash
    rather than the tokens themselves: sorted by tokens, the lexicographically largest answer of
    every group would always be the newest entry, and be replayed and kept longest.
    """
    by_prompt: dict[str, list[int]] = {}
    for i, key in enumerate(prompt_keys):
        by_prompt.setdefault(key, []).append(i)
    keys = [response_order_key(ids, mask, seed) for ids, mask in zip(responses, response_masks, strict=True)]
    sorted_rows = {key: iter(sorted(rows, key=lambda i: (keys[i], i))) for key, rows in by_prompt.items()}
    # each prompt's slots, in row order, are filled with its rows in hash order
    return [next(sorted_rows[key]) for key in prompt_keys]
