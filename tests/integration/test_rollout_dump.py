"""``trainer.rollout_data_dir`` with replayed rows: verl's own dump code (``_log_rollout_data``,
``_dump_generations``, ``_write_generations``) runs on a RePO batch and writes every row, replayed
rows marked; TransferQueue is replaced by a dict of rows."""

from __future__ import annotations

import json

import pytest
import torch
import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.utils import tensordict_utils as tu

from repo_ext.integration.replay_rows import REPLAY_SESSION_BASE, is_replay_row_key, replay_row_key
from repo_ext.integration.rollout_dump import REPLAYED_COLUMN, mark_replayed_rows
from repo_ext.integration.trainer import RePOTrainer

PAD = 0


class _Tokenizer:
    pad_token_id = PAD

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(i)) for i in ids if int(i) != PAD)


def _row(uid, prompt, response, reward):
    scores = torch.zeros(len(response))
    scores[-1] = reward
    return {
        "uid": uid,
        "prompts": torch.tensor(prompt),
        "responses": torch.tensor(response),
        "rm_scores": scores,
        "reward_model": {"ground_truth": "7"},
    }


def _fake_tq(monkeypatch, rows):
    def kv_batch_get(keys, partition_id, select_fields=None):
        fields = {}
        for name in select_fields:
            values = [rows[key][name] for key in keys]
            if isinstance(values[0], torch.Tensor):
                values = torch.nested.as_nested_tensor(values, layout=torch.jagged)
            fields[name] = values
        return tu.get_tensordict(fields)

    monkeypatch.setattr(tq, "kv_batch_get", kv_batch_get)


def test_replay_keys_are_in_verls_format():
    assert replay_row_key("3f2a-9c", 0) == f"3f2a-9c_{REPLAY_SESSION_BASE}_0"
    assert replay_row_key("3f2a-9c", 2).rsplit("_", 2) == ["3f2a-9c", str(REPLAY_SESSION_BASE + 2), "0"]
    assert is_replay_row_key(replay_row_key("u", 5))
    assert not is_replay_row_key("u_0_0") and not is_replay_row_key("u_7_3") and not is_replay_row_key("padabc_1_0")
    with pytest.raises(ValueError):
        replay_row_key("u", -1)


def test_verl_dumps_a_repo_batch_with_replayed_rows_marked(tmp_path, monkeypatch):
    # one group "u1": two on-policy rows (sessions 0, 1), two replayed rows, one verl padding row
    rows = {
        "u1_1_0": _row("u1", [5, 6], [11, 12], 0.0),
        replay_row_key("u1", 1): _row("u1::repo_replay", [5, 6], [31], 1.0),
        "u1_0_0": _row("u1", [5, 6], [21, 22, 23], 1.0),
        replay_row_key("u1", 0): _row("u1::repo_replay", [5, 6], [41, 42], 0.5),
        "padff_0_0": _row("padff", [5], [9], 0.0),
    }
    _fake_tq(monkeypatch, rows)
    keys = list(rows)
    batch = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train", fields=None, extra_info={})

    trainer = object.__new__(RePOTrainer)  # only what verl's dump code touches
    trainer.tokenizer, trainer.global_steps = _Tokenizer(), 4
    trainer._init_dump_executor()
    trainer._log_rollout_data(batch, {}, str(tmp_path))  # verl's method, inherited unchanged
    trainer._shutdown_dump_executor()

    lines = [json.loads(line) for line in (tmp_path / "4.jsonl").read_text().splitlines()]
    # verl sorts by (uid, int(session), int(index)): on-policy sessions 0, 1, then replayed 10000, 10001
    assert [line["uid"] for line in lines] == [
        "padff_0_0", "u1_0_0", "u1_1_0", replay_row_key("u1", 0), replay_row_key("u1", 1),
    ]
    assert [line[REPLAYED_COLUMN] for line in lines] == [False, False, False, True, True]
    assert [line["output"] for line in lines] == ["9", "21 22 23", "11 12", "41 42", "31"]
    assert [line["score"] for line in lines] == [0.0, 1.0, 0.0, 0.5, 1.0]
    assert all(line["step"] == 4 and line["input"].startswith("5") for line in lines)


def test_the_old_replay_key_format_crashes_verls_dump(monkeypatch, tmp_path):
    """Why the key format matters: ``{uid}_repo{j}_0`` (before) fails verl's ``int(parts[1])``."""
    rows = {"u1_0_0": _row("u1", [5], [1], 1.0), "u1_repo0_0": _row("u1::repo_replay", [5], [2], 0.0)}
    _fake_tq(monkeypatch, rows)
    captured = []

    class _Plain:
        tokenizer = _Tokenizer()

        def _dump_generations(self, **kwargs):
            captured.append(kwargs)

    batch = KVBatchMeta(keys=list(rows), tags=[{}, {}], partition_id="train", fields=None, extra_info={})
    with pytest.raises(ValueError, match="repo0"):
        PPOTrainer._log_rollout_data(_Plain(), batch, {}, str(tmp_path))
    assert not captured


def test_mark_replayed_rows_without_uid_column_changes_nothing():
    columns = {"score": [1.0]}
    assert mark_replayed_rows(columns) is columns
