"""Debugging aid (``REPO_EXT_DUMP_DIR``, driver): each step's rows as the actor will see them, from
the ``_compute_advantage`` hook, and the store as restored, from ``_load_checkpoint``."""

from __future__ import annotations

import os

import torch
import transfer_queue as tq

from repo_ext.algorithm.store import ReplayStore
from repo_ext.integration.hooks.step_state import column_strings
from repo_ext.integration.replay_rows import OFF_POLICY_FIELD

#: when set, every step's rows (ids, old log-probs, advantages, rewards, flags) are saved there
DUMP_DIR_ENV = "REPO_EXT_DUMP_DIR"


def dump_step_rows(dump_dir: str, partition_id: str, keys: list[str], prompt_key_of: dict[str, str], step: int) -> None:
    """``dump_dir/step_<step>.pt``: a dict of per-row lists (keys, uid, off_policy, prompt_key and
    one (L,) tensor per row for each of responses, masks, position_ids, old_log_probs, advantages,
    rm_scores)."""
    # (verl's V1 rows carry no attention_mask: every token of a row is attended to)
    tensors = ["responses", "response_mask", "loss_mask", "position_ids", "old_log_probs", "advantages", "rm_scores"]
    fields = ["uid", *tensors, OFF_POLICY_FIELD]
    data = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=fields)
    rows = {
        "keys": list(keys),
        "uid": column_strings(data["uid"]),
        "off_policy": [int(x) for x in torch.as_tensor(data[OFF_POLICY_FIELD]).reshape(-1).tolist()],
        "prompt_key": [prompt_key_of.get(k) for k in keys],
    }
    for name in tensors:
        rows[name] = [t.clone() for t in data[name].unbind()]
    os.makedirs(dump_dir, exist_ok=True)
    torch.save(rows, os.path.join(dump_dir, f"step_{step}.pt"))


def dump_restored_store(store: ReplayStore, step: int) -> None:
    """With ``REPO_EXT_DUMP_DIR`` set: the store's state dict as restored at ``step``."""
    dump_dir = os.environ.get(DUMP_DIR_ENV)
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        torch.save(store.state_dict(), os.path.join(dump_dir, f"restored_store_step_{step}.pt"))
