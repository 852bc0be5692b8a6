"""The tiny test model: built locally, deterministic, idempotent, with a usable chat tokenizer."""

import hashlib

import pytest

from repo_ext.assets.tiny_model import build_tiny_model


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path, tiny_model_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    for name in ("tokenizer.json", "model.safetensors"):
        assert _digest(again / name) == _digest(tiny_model_path / name)
    assert _digest(other / "model.safetensors") != _digest(tiny_model_path / "model.safetensors")


def test_rebuild_is_a_no_op(tiny_model_path):
    before = (tiny_model_path / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(tiny_model_path, seed=0)
    assert (tiny_model_path / "model.safetensors").stat().st_mtime_ns == before


def test_model_shape(tiny_model, tiny_tokenizer):
    config = tiny_model.config
    assert (config.num_hidden_layers, config.hidden_size) == (2, 64)
    assert config.vocab_size == len(tiny_tokenizer)
    assert config.tie_word_embeddings


def test_tokenizer_chat_template_special_tokens_and_round_trip(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|im_end|>"
    assert tok.convert_ids_to_tokens(tok.pad_token_id) == "<|endoftext|>"
    text = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"
    sample = "The answer is 12. #### 12 ünïcode"
    assert tok.decode(tok.encode(sample, add_special_tokens=False)) == sample


def test_bad_seed_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        build_tiny_model(tmp_path, seed=-1)
