"""``data.max_prompt_length`` from the prompts a run will train on.

verl left-pads every prompt to ``data.max_prompt_length`` (its agent loop pads prompt ids to the
rollout's ``prompt_length``), and a CPU actor, which does not remove padding, runs the model over
every padded position in the old-log-prob pass and the update. The demo's ~65-token arithmetic
prompts padded to a fixed 256 made each row 256 + response tokens where ~80 + response do.
"""

from __future__ import annotations

from pathlib import Path

#: tokens added to the longest prompt: verl drops (``data.filter_overlong_prompts``) or truncates
#: prompts longer than the setting, so a tokenizer that counts a token more must not lose rows
MARGIN_TOKENS = 8


def prompt_length_for(model: str | Path, rows: list[dict], multiple: int = 16) -> int:
    """The longest chat-templated prompt of ``rows`` (verl's parquet schema, ``prompt`` a list of
    chat messages) in ``model``'s tokens, plus :data:`MARGIN_TOKENS`, rounded up to ``multiple``."""
    from transformers import AutoTokenizer

    if not rows:
        raise ValueError("prompt_length_for needs at least one row to measure")
    if multiple < 1:
        raise ValueError(f"multiple={multiple} must be >= 1")
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    longest = max(
        len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        for row in rows
    )
    return -(-(longest + MARGIN_TOKENS) // multiple) * multiple
