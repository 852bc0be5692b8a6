"""SmolLM2 builder: idempotence and atomicity with a stand-in conversion (fast), and the real
build's token fix when it is already in the cache (skipped otherwise: building takes ~30 s)."""

import json
import os

import pytest

from repo_ext.assets import smollm2
from repo_ext.assets.smollm2 import MARKER_FILE, build_smollm2, default_model_dir, is_built


@pytest.fixture
def conversions(monkeypatch):
    """Replace the GGUF conversion by one that writes a small file; record each call."""
    calls = []

    def convert(folder, dtype):
        calls.append((folder, dtype))
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / MARKER_FILE).write_text(json.dumps({"dtype": dtype}))

    monkeypatch.setattr(smollm2, "_convert", convert)
    return calls


def test_builds_once_then_returns_the_folder(tmp_path, conversions):
    out = tmp_path / "model"
    assert build_smollm2(out) == out
    assert is_built(out) and (out / "config.json").exists()
    assert build_smollm2(out) == out
    assert len(conversions) == 1
    assert conversions[0][1] == "float32"
    assert conversions[0][0] != out  # built under another name, then renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def convert_then_die(folder, dtype):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "_convert", convert_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_smollm2(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_dead_builds_are_removed(tmp_path, conversions):
    dead = tmp_path / ".model.partial-4194999"  # above Linux's largest pid: no such process
    alive = tmp_path / f".model.partial-{os.getppid()}"
    for folder in (dead, alive):
        folder.mkdir()
    build_smollm2(tmp_path / "model")
    assert not dead.exists()
    assert alive.exists()


def test_an_existing_empty_folder_is_filled(tmp_path, conversions):
    (tmp_path / "model").mkdir()
    assert is_built(build_smollm2(tmp_path / "model"))


def test_another_process_finishing_first_wins(tmp_path, monkeypatch):
    out = tmp_path / "model"

    def convert_while_another_finishes(folder, dtype):
        folder.mkdir(parents=True)
        (folder / MARKER_FILE).write_text(json.dumps({"dtype": dtype, "by": "us"}))
        out.mkdir()
        (out / MARKER_FILE).write_text(json.dumps({"dtype": dtype, "by": "them"}))

    monkeypatch.setattr(smollm2, "_convert", convert_while_another_finishes)
    assert build_smollm2(out) == out
    assert json.loads((out / MARKER_FILE).read_text())["by"] == "them"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_folder_that_is_not_a_build_is_left_alone(tmp_path, conversions):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a finished SmolLM2 build"):
        build_smollm2(tmp_path / "model")
    assert conversions == []


def test_dtype_is_checked(tmp_path, conversions):
    with pytest.raises(ValueError, match="float16"):
        build_smollm2(tmp_path / "model", dtype="float16")
    build_smollm2(tmp_path / "model", dtype="bfloat16")
    with pytest.raises(ValueError, match="already holds a bfloat16 build"):
        build_smollm2(tmp_path / "model", dtype="float32")


def test_default_folder_follows_repo_ext_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPO_EXT_CACHE", str(tmp_path))
    assert default_model_dir() == tmp_path / "SmolLM2-135M-Instruct"
    assert default_model_dir("bfloat16") == tmp_path / "SmolLM2-135M-Instruct-bfloat16"


@pytest.mark.skipif(not is_built(default_model_dir()), reason="run `python -m repo_ext.assets.smollm2` first")
def test_built_model_ends_turns_with_im_end():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = default_model_dir()
    for name in ("config.json", "generation_config.json"):
        config = json.loads((folder / name).read_text())
        assert (config["eos_token_id"], config["pad_token_id"]) == (2, 2), name
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == ("<|im_end|>", 2, 2)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")

    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert 2 in new_tokens, "generation did not stop at <|im_end|>"
    assert "Paris" in tokenizer.decode(new_tokens[: new_tokens.index(2)])
