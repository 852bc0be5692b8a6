"""Turn what a user points the evaluator at into a Hugging Face model folder.

Accepted:

1. A Hugging Face folder: ``config.json`` plus weights (``*.safetensors`` or ``pytorch_model*.bin``).
2. A verl checkpoint (FSDP/FSDP2 engine, verl 0.9.1). The trainer writes, per save,
   ``<trainer.default_local_dir>/global_step_<N>/actor/`` with

   - ``model_world_size_<W>_rank_<r>.pt``: each rank's shard of the state dict (DTensors for FSDP2),
   - ``fsdp_config.json``: ``{"FSDP_version": ..., "world_size": W}``,
   - ``huggingface/``: config, tokenizer and generation config, and the full weights only when
     ``actor_rollout_ref.actor.checkpoint.save_contents`` includes ``hf_model``,

   and ``latest_checkpointed_iteration.txt`` (the newest N) in the root
   (verl/utils/checkpoint/fsdp_checkpoint_manager.py, checkpoint_handler.py).
   Any of the root, a ``global_step_<N>`` folder or its ``actor/`` folder is accepted. If
   ``actor/huggingface/`` holds weights it is used as is; otherwise the shards are merged with
   verl's own ``verl.model_merger`` FSDP merger into ``actor/huggingface_merged/`` (once; reused
   afterwards), which writes bfloat16 weights plus the tokenizer.

Megatron checkpoints are not merged here: run ``python -m verl.model_merger merge --backend
megatron --local_dir .../actor --target_dir OUT`` and evaluate OUT.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ResolvedModel", "resolve_model_dir", "has_hf_weights", "MERGED_DIR_NAME"]

MERGED_DIR_NAME = "huggingface_merged"
_TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl.utils.checkpoint.checkpoint_manager
_SHARD_PATTERN = re.compile(r"model_world_size_(\d+)_rank_(\d+)\.pt")
_STEP_PATTERN = re.compile(r"global_step_(\d+)")


@dataclass(frozen=True)
class ResolvedModel:
    """``path``: the HF folder to load; ``kind``: "hf", "verl-hf" (weights saved by verl) or
    "verl-merged" (merged from FSDP shards); ``checkpoint``: the verl actor folder, if any."""

    path: Path
    kind: str
    checkpoint: Path | None = None


def has_hf_weights(folder: Path) -> bool:
    """True when ``folder`` holds a loadable HF causal-LM: config.json and weight files."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return False
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _actor_dir(path: Path) -> Path | None:
    """The ``actor/`` folder of a verl checkpoint root, step folder or actor folder, else None."""
    if (path / "fsdp_config.json").is_file() or any(_SHARD_PATTERN.fullmatch(p.name) for p in path.glob("*.pt")):
        return path
    if (path / "actor").is_dir():
        return path / "actor"
    tracker = path / _TRACKER_FILE
    if tracker.is_file():
        step = tracker.read_text().strip()
        step_dir = path / f"global_step_{step}"
        if not (step_dir / "actor").is_dir():
            raise FileNotFoundError(
                f"{tracker} names step {step!r} but {step_dir / 'actor'} does not exist; "
                f"pass a global_step_<N> folder explicitly"
            )
        return step_dir / "actor"
    steps = sorted(
        (int(m.group(1)), p) for p in path.glob("global_step_*") if (m := _STEP_PATTERN.fullmatch(p.name))
    )
    if steps and (steps[-1][1] / "actor").is_dir():
        return steps[-1][1] / "actor"
    return None


def _merge_fsdp_shards(actor: Path, target: Path) -> None:
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    hf_config_dir = actor / "huggingface"
    if not (hf_config_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{actor} has FSDP shards but no huggingface/config.json next to them; verl writes it on "
            f"every save, so this folder is incomplete"
        )
    target.mkdir(parents=True, exist_ok=True)
    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=str(actor),
        target_dir=str(target),
        hf_model_config_path=str(hf_config_dir),
    )
    merger = FSDPModelMerger(config)
    merger.merge_and_save()
    merger.cleanup()


def resolve_model_dir(path: str | Path, merged_dir: str | Path | None = None) -> ResolvedModel:
    """Return the HF folder to evaluate for ``path`` (see the module docstring for the layouts).

    Args:
        path: an HF folder, or a verl checkpoint root / ``global_step_<N>`` / ``actor`` folder.
        merged_dir: where to write the merged HF model of an FSDP checkpoint without HF weights;
            default ``<actor>/huggingface_merged``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--model {path}: no such file or folder")
    if not path.is_dir():
        raise ValueError(f"--model {path}: expected a folder (an HF model folder or a verl checkpoint)")
    if has_hf_weights(path):
        return ResolvedModel(path=path, kind="hf")

    actor = _actor_dir(path)
    if actor is None:
        raise ValueError(
            f"--model {path}: neither an HF model folder (config.json + *.safetensors) nor a verl "
            f"checkpoint (global_step_<N>/actor/ with model_world_size_*_rank_*.pt and fsdp_config.json)"
        )
    if has_hf_weights(actor / "huggingface"):
        return ResolvedModel(path=actor / "huggingface", kind="verl-hf", checkpoint=actor)
    if (actor / "dist_ckpt").exists() or (actor / "model" / "dist_ckpt").exists():
        raise ValueError(
            f"{actor} is a Megatron checkpoint; merge it first with `python -m verl.model_merger merge "
            f"--backend megatron --local_dir {actor} --target_dir OUT` and pass --model OUT"
        )
    shards = sorted(p.name for p in actor.glob("model_world_size_*_rank_*.pt"))
    if not shards:
        raise FileNotFoundError(
            f"{actor} holds no model shards (model_world_size_*_rank_*.pt) and no huggingface/ weights; "
            f"was the checkpoint saved with 'model' in actor.checkpoint.save_contents?"
        )
    world_size = json.loads((actor / "fsdp_config.json").read_text()).get("world_size")
    if world_size is None:
        raise ValueError(f"{actor / 'fsdp_config.json'} has no world_size")
    expected = {f"model_world_size_{world_size}_rank_{r}.pt" for r in range(world_size)}
    missing = sorted(expected - set(shards))
    if missing:
        raise FileNotFoundError(f"{actor}: world_size {world_size} but shard files are missing: {missing}")

    target = Path(merged_dir).expanduser() if merged_dir is not None else actor / MERGED_DIR_NAME
    newest_shard = max((actor / s).stat().st_mtime for s in expected)
    if not (has_hf_weights(target) and (target / "config.json").stat().st_mtime >= newest_shard):
        print(f"merging {world_size} FSDP shard(s) of {actor} into {target} (verl.model_merger) ...", flush=True)
        _merge_fsdp_shards(actor, target)
    return ResolvedModel(path=target, kind="verl-merged", checkpoint=actor)
