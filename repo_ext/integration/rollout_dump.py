"""Replayed rows in verl's rollout dump (``trainer.rollout_data_dir``).

verl's V1 trainer dumps every row of a training step to ``<rollout_data_dir>/<step>.jsonl``
(verl/trainer/ppo/v1/trainer_base.py ``_log_rollout_data``), sorted by TransferQueue key, with the
key in the ``uid`` column. Replayed rows have keys in verl's format (``replay_rows.replay_row_key``),
so verl parses them like any other row; this module adds one column, ``repo_replayed``, so a reader
of the dump can tell a replayed (stored, off-policy) response from one generated at that step.
"""

from __future__ import annotations

from typing import Any

from repo_ext.integration.replay_rows import is_replay_row_key

#: the column added to each dumped row: True for a replayed row
REPLAYED_COLUMN = "repo_replayed"


def mark_replayed_rows(reward_extra_infos_dict: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """verl's per-row dump columns plus ``repo_replayed``, read from the ``uid`` column (the TQ keys).

    Returned unchanged when there is no ``uid`` column (nothing to read the flag from).
    """
    keys = reward_extra_infos_dict.get("uid")
    if keys is None:
        return reward_extra_infos_dict
    return {**reward_extra_infos_dict, REPLAYED_COLUMN: [is_replay_row_key(str(key)) for key in keys]}
