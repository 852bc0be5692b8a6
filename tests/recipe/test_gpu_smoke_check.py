"""recipe/repo/gpu_smoke_check.sh composes (no training) into the setting docs/gpu.md describes.

The script prints its first run's arguments with REPO_RECIPE_PRINT_ARGS=1; they are composed on
verl's stock config directory, as ``python -m verl.trainer.main_ppo algorithm=repo ...`` does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import verl
from hydra import compose, initialize_config_dir

SCRIPT = Path(__file__).resolve().parents[2] / "recipe" / "repo" / "gpu_smoke_check.sh"
VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


def test_smoke_check_composes_to_the_documented_setting(tmp_path):
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "REPO_RECIPE_PRINT_ARGS": "1", "OUT_DIR": str(tmp_path / "smoke")},
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    args = done.stdout.splitlines()
    assert args[0] == "algorithm=repo"  # the literal launch form
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=args)
    assert cfg.algorithm.adv_estimator == "repo_split" and cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "repo"
    assert cfg.trainer.v1.trainer_mode == "repo_sync"
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.actor_rollout_ref.rollout.name == "vllm" and cfg.trainer.n_gpus_per_node == 2
    # every prompt every step (8 prompts, batch 8), gate at one visit of n=4: replay from step 2
    assert cfg.data.train_batch_size == 8 and cfg.actor_rollout_ref.rollout.n == 4
    assert cfg.algorithm.repo.min_cache_to_replay == cfg.actor_rollout_ref.rollout.n
    assert cfg.trainer.total_training_steps == 3 and cfg.trainer.save_freq == 3
    assert cfg.trainer.rollout_data_dir == str(tmp_path / "smoke" / "rollouts")
    assert not (tmp_path / "smoke" / "train.parquet").exists()  # printing the arguments writes no data


def test_the_tiny_one_gpu_check_composes_to_the_smoke_check_on_the_tiny_model(tmp_path):
    """recipe/repo/gpu_tiny_check.sh: the same smoke check, tiny model, hf_cpu rollout, one GPU."""
    import sys

    script = SCRIPT.with_name("gpu_tiny_check.sh")
    out = tmp_path / "tiny"
    done = subprocess.run(
        ["bash", str(script)],
        env={**os.environ, "REPO_RECIPE_PRINT_ARGS": "1", "OUT_DIR": str(out), "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    args = done.stdout.splitlines()
    assert args[0] == "algorithm=repo"
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=args)
    assert cfg.algorithm.adv_estimator == "repo_split" and cfg.trainer.v1.trainer_mode == "repo_sync"
    assert cfg.actor_rollout_ref.model.path == str(out / "tiny_model")
    assert (out / "tiny_model" / "config.json").exists() and (out / "train.parquet").exists()
    assert cfg.data.train_files == str(out / "train.parquet")
    assert cfg.actor_rollout_ref.rollout.name == "hf_cpu" and cfg.trainer.n_gpus_per_node == 1
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert cfg.actor_rollout_ref.model.use_remove_padding is False
    assert cfg.reward.custom_reward_function.path.endswith("repo_ext/cpu/tiny_reward.py")
    # not the CPU preset: the actor runs on verl's CUDA platform in its default mixed precision
    assert cfg.trainer.device == "cuda"
    assert "mixed_precision" not in cfg.actor_rollout_ref.actor.fsdp_config  # verl's default (bf16 params)
