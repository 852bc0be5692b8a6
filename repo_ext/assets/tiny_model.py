"""A tiny random Llama and a tokenizer trained locally: a model folder for fast CPU tests.

Nothing is downloaded. The tokenizer is a byte-level BPE trained with ``tokenizers`` on arithmetic
text generated here (so any string encodes, without unknown tokens); it carries a ChatML chat
template, ``<|im_end|>`` as EOS and ``<|endoftext|>`` as padding. The model is a 2-layer
``LlamaForCausalLM`` (hidden 64, tied embeddings) initialised from ``seed``.

Example::

    >>> from repo_ext.assets.tiny_model import build_tiny_model
    >>> path = build_tiny_model("/tmp/tiny")          # about a second the first time
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained(path)
    >>> model = AutoModelForCausalLM.from_pretrained(path)
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

__all__ = ["build_tiny_model", "TINY_MODEL_SPEC"]

# Everything that determines the files; its hash names the build, so a changed spec rebuilds.
TINY_MODEL_SPEC = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "bpe_vocab_size": 400,
    "corpus_lines": 2000,
    "format_version": 1,
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML, as used by Qwen2 and SmolLM2: verl's agent loop calls apply_chat_template on the
# dataset's chat messages with add_generation_prompt=True.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_MARKER = "tiny_model_spec.json"


def _arithmetic_corpus(num_lines: int, seed: int) -> list[str]:
    """Short arithmetic questions and answers in the style of the test prompts."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice(["+", "-", "*"])
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        lines.append(f"What is {a} {op} {b}? The answer is {value}. #### {value}")
    return lines


def _train_tokenizer(out_dir: Path, spec: dict, seed: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec["bpe_vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = _arithmetic_corpus(spec["corpus_lines"], seed)
    corpus += ["user", "assistant", "system", "Answer with #### followed by the number."]
    tokenizer.train_from_iterator(corpus, trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    fast.save_pretrained(out_dir)


def _build_model(out_dir: Path, spec: dict, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(out_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out_dir)


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Create (or reuse) the tiny model folder at ``out_dir`` and return its path.

    Idempotent: a folder already built with the same spec and seed is returned as is. Deterministic:
    the same seed gives the same tokenizer and the same weights.

    Args:
        out_dir: folder to write ``config.json``, ``model.safetensors`` and the tokenizer files to.
        seed: seeds the corpus the tokenizer is trained on and the model's initialisation.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"build_tiny_model: seed must be a non-negative int, got {seed!r}")
    out_dir = Path(out_dir)
    spec = {**TINY_MODEL_SPEC, "seed": seed}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    marker = out_dir / _MARKER
    if marker.exists() and json.loads(marker.read_text()).get("digest") == digest:
        return out_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    if marker.exists():
        marker.unlink()
    _train_tokenizer(out_dir, spec, seed)
    _build_model(out_dir, spec, seed)
    # written last: a build interrupted half-way is rebuilt next time
    marker.write_text(json.dumps({"digest": digest, "spec": spec}, indent=2))
    return out_dir
