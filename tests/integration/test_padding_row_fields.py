"""A zero-advantage-skip padding row fills each field by its declared kind, never by its length."""

from __future__ import annotations

import pytest
import torch

from repo_ext.integration.zero_adv_skip import PADDING_SEQ_LEN, padding_row

EOS = 9


def _template(**extra):
    # prompt and response of the same length (3): a length match could not tell the kinds apart
    row = {
        "prompts": torch.tensor([1, 2, 3]),
        "responses": torch.tensor([4, 5, 6]),
        "input_ids": torch.tensor([1, 2, 3, 4, 5, 6]),
        "position_ids": torch.arange(6),
        "response_mask": torch.ones(3, dtype=torch.int64),
        "uid": "u",
    }
    row.update(extra)
    return row


def test_declared_kinds_get_their_padding_shapes():
    row = padding_row(
        _template(ref_log_prob=torch.full((3,), -1.0), log_probs=torch.full((6,), -2.0), repo_norm_rows=torch.tensor(5.0)),
        EOS,
    )
    assert row["ref_log_prob"].tolist() == [0.0]  # a response-token field: one zero
    assert row["log_probs"].tolist() == [0.0] * PADDING_SEQ_LEN  # a whole-sequence field
    assert float(row["repo_norm_rows"]) == 5.0  # a per-row value: copied


def test_other_fields_are_copied_as_per_row_values():
    # verl's RLHFDataset puts a (1,) ``dummy_tensor`` on every row: a per-row value, copied
    row = padding_row(_template(dummy_tensor=torch.tensor([0], dtype=torch.uint8)), EOS)
    assert row["dummy_tensor"].tolist() == [0] and row["uid"] == "u"


def test_an_undeclared_token_field_is_named_not_guessed():
    with pytest.raises(ValueError, match=r"'my_token_scores' of shape \(3,\).*skip_zero_advantage_rows=false"):
        padding_row(_template(my_token_scores=torch.zeros(3)), EOS)
