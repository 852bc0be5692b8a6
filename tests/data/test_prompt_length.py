"""repo_ext.data.prompt_length: the data.max_prompt_length a run's prompts need, checked against
verl's own overlong-prompt filter (RLHFDataset) and a token count taken another way."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from repo_ext.data import load_rows, make_row, write_parquet
from repo_ext.data.prompt_length import MARGIN_TOKENS, prompt_length_for


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from repo_ext.assets.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _rows():
    # prompts of clearly different lengths: the longest decides
    return [make_row("arithmetic", "1 + 2 =" + " and again" * k, "3", k, "train") for k in (0, 5, 40, 3)]


def _verl_keeps(model, rows, tmp_path, max_prompt_length) -> int:
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    path = write_parquet(rows, tmp_path / f"rows_{max_prompt_length}.parquet")
    config = OmegaConf.create({
        "max_prompt_length": max_prompt_length, "prompt_key": "prompt", "filter_overlong_prompts": True,
        "filter_overlong_prompts_workers": 1, "truncation": "error", "cache_dir": str(tmp_path / "cache"),
    })
    return len(RLHFDataset(str(path), AutoTokenizer.from_pretrained(str(model)), config))


def test_verls_filter_keeps_every_row_at_that_length_and_drops_the_longest_below_it(tiny, tmp_path):
    from transformers import AutoTokenizer

    rows = _rows()
    length = prompt_length_for(tiny, rows)
    # the longest prompt counted another way: the chat text first, then plain tokenization
    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    longest = max(
        len(tokenizer(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False)["input_ids"])
        for r in rows
    )
    assert length % 16 == 0 and longest + MARGIN_TOKENS <= length < longest + MARGIN_TOKENS + 16
    assert _verl_keeps(tiny, rows, tmp_path, length) == len(rows)
    assert _verl_keeps(tiny, rows, tmp_path, longest - 1) == len(rows) - 1  # the filter is real


def test_the_demos_arithmetic_needs_far_less_than_256(tiny):
    rows = load_rows("arithmetic", limit=32) + load_rows("arithmetic_test", limit=32)
    assert prompt_length_for(tiny, rows) <= 160  # the tiny tokenizer: 144; SmolLM2's: 80


@pytest.mark.parametrize("rows, multiple, message", [([], 16, "at least one row"), (None, 0, "multiple=0")])
def test_bad_input(tiny, rows, multiple, message):
    with pytest.raises(ValueError, match=message):
        prompt_length_for(tiny, _rows() if rows is None else rows, multiple=multiple)
