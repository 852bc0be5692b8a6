"""Model resolution: HF folders, and verl FSDP2 checkpoints written by verl's own checkpoint manager."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repo_ext.evaluation.checkpoint import MERGED_DIR_NAME, has_hf_weights, resolve_model_dir


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.float() for k, v in AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}


def test_hf_folder_is_used_as_is(tiny_model_dir):
    resolved = resolve_model_dir(tiny_model_dir)
    assert resolved.path == tiny_model_dir and resolved.kind == "hf" and resolved.checkpoint is None


def test_sharded_checkpoint_is_merged_to_the_trained_weights(tiny_model_dir, verl_checkpoints):
    sharded, _ = verl_checkpoints
    actor = sharded / "global_step_2" / "actor"
    assert not has_hf_weights(actor / "huggingface")  # only config + tokenizer were saved
    resolved = resolve_model_dir(sharded)  # the root: the tracker names step 2
    assert resolved.kind == "verl-merged" and resolved.checkpoint == actor
    assert resolved.path == actor / MERGED_DIR_NAME
    merged, original = _weights(resolved.path), _weights(tiny_model_dir)
    assert set(merged) == set(original)
    for name, value in original.items():
        # the step-2 model is the original + 0.02; verl's merger stores bfloat16
        expected = (value + 0.02).to(torch.bfloat16).float()
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=0, msg=name)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(resolved.path).chat_template  # the tokenizer came along


def test_step_and_actor_folders_resolve_to_the_same_merge(verl_checkpoints):
    sharded, _ = verl_checkpoints
    step1 = resolve_model_dir(sharded / "global_step_1")
    assert step1.checkpoint == sharded / "global_step_1" / "actor"
    again = resolve_model_dir(sharded / "global_step_1" / "actor")
    assert again.path == step1.path
    mtime = (step1.path / "config.json").stat().st_mtime
    resolve_model_dir(sharded / "global_step_1")
    assert (step1.path / "config.json").stat().st_mtime == mtime  # merged once, then reused


def test_checkpoint_saved_with_hf_model_needs_no_merge(tiny_model_dir, verl_checkpoints):
    _, with_hf = verl_checkpoints
    resolved = resolve_model_dir(with_hf / "global_step_3")
    assert resolved.kind == "verl-hf" and resolved.path == with_hf / "global_step_3" / "actor" / "huggingface"
    assert not (with_hf / "global_step_3" / "actor" / MERGED_DIR_NAME).exists()
    original = _weights(tiny_model_dir)
    for name, value in _weights(resolved.path).items():
        torch.testing.assert_close(value, (original[name] + 0.03).to(torch.bfloat16).float(), rtol=0, atol=0, msg=name)


def test_explicit_merged_dir(verl_checkpoints, tmp_path):
    sharded, _ = verl_checkpoints
    resolved = resolve_model_dir(sharded / "global_step_1", merged_dir=tmp_path / "out")
    assert resolved.path == tmp_path / "out" and has_hf_weights(resolved.path)


def test_errors_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_model_dir(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither an HF model folder"):
        resolve_model_dir(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7")
    with pytest.raises(FileNotFoundError, match="global_step_7"):
        resolve_model_dir(tmp_path)
    megatron = tmp_path / "mega" / "actor" / "dist_ckpt"
    megatron.mkdir(parents=True)
    with pytest.raises(ValueError, match="--backend megatron"):
        resolve_model_dir(tmp_path / "mega")
