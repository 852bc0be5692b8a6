"""Shared fixtures: a tiny random model folder, and verl checkpoints of it (built once per session)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from repo_ext.assets.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


# Writes <root>/global_step_<step>/actor/ exactly as verl 0.9.1's FSDP engine does: FSDP2
# (fully_shard) on a gloo group of world size 1, saved by FSDPCheckpointManager, plus the tracker
# file that verl's checkpoint handler writes. Runs in a subprocess: it initialises torch.distributed.
_SAVE_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.trainer.config import CheckpointConfig
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    model_dir = sys.argv[1]
    dist.init_process_group("gloo", rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",))
    for job in sys.argv[2:]:  # root:step:contents
        root, step, contents = job.split(":")
        step, contents = int(step), contents.split(",")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        with torch.no_grad():  # a trained model differs from its start: shift every weight by the step
            for p in model.parameters():
                p.add_(0.01 * step)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        manager = FSDPCheckpointManager(
            model=model, optimizer=None, lr_scheduler=None,
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            checkpoint_config=CheckpointConfig(save_contents=contents, load_contents=contents),
        )
        manager.save_checkpoint(os.path.join(root, f"global_step_{step}", "actor"), global_step=step)
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(step))
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_verl_checkpoints(model_dir: Path, jobs: list[tuple[Path, int, str]]) -> None:
    """Write one checkpoint per (root, step, save_contents) job, in one subprocess."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    args = [f"{root}:{step}:{contents}" for root, step, contents in jobs]
    done = subprocess.run(
        [sys.executable, "-c", _SAVE_SCRIPT, str(model_dir), *args],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, f"writing the verl checkpoints failed:\n{done.stderr[-3000:]}"


@pytest.fixture(scope="session")
def verl_checkpoints(tiny_model_dir, tmp_path_factory):
    """A sharded-only checkpoint root with steps 1 and 2 (tracker -> 2), and one saved with hf_model."""
    sharded = tmp_path_factory.mktemp("verl_sharded")
    with_hf = tmp_path_factory.mktemp("verl_with_hf")
    save_verl_checkpoints(tiny_model_dir, [(sharded, 1, "model"), (sharded, 2, "model"), (with_hf, 3, "model,hf_model")])
    return sharded, with_hf
