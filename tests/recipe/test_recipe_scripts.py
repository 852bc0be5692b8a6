"""Each recipe/repo run script composes with Hydra (no training) into the paper's settings.

The scripts print their arguments instead of training when REPO_RECIPE_PRINT_ARGS=1; the test
composes exactly those arguments on verl's stock config directory (our configs come in through the
Hydra search-path plugin, as with `python -m verl.trainer.main_ppo`). The expected values are
written out below from the paper's reference scripts (arXiv 2506.09340; SihengLi99/RePO
scripts/train_replay_grpo.slurm and configs/grpo.yaml), not read from our yaml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import verl
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE = REPO_ROOT / "recipe" / "repo"
VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")

# The paper's training settings, written out independently of our configs.
PAPER = {
    "rollout_n": 8,  # G_on = NUM_GENERATIONS
    "num_replays": 8,  # G_off
    "min_cache_to_replay": 16,
    "max_cache_size": 16,
    "advantage_mode": "split",
    "off_policy_loss_coef": 1.0,
    "std_epsilon": 1e-4,
    "prompts_per_step": 4,  # 8 completions x 4 GPUs per device batch = 32 = 4 prompts x 8
    "epochs": 3,
    "lr": 1e-6,
    "lr_schedule": "cosine",
    "warmup_ratio": 0.1,
    "max_grad_norm": 1.0,
    "clip_low": 0.2,
    "clip_high": 0.2,
    "max_prompt": 512,
    "max_completion": 1024,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "seed": 42,
}

SCRIPTS = {
    # script: (default model, replay strategy or None for the GRPO baseline, experiment name)
    "run_qwen2.5_math_1.5b_recent_k.sh": ("Qwen/Qwen2.5-Math-1.5B", "recent_k", "qwen2.5-math-1.5b-repo-recent_k"),
    "run_qwen2.5_math_7b_recent_k.sh": ("Qwen/Qwen2.5-Math-7B", "recent_k", "qwen2.5-math-7b-repo-recent_k"),
    "run_qwen3_1.7b_highest_k.sh": ("Qwen/Qwen3-1.7B", "highest_k", "qwen3-1.7b-repo-highest_k"),
    "run_grpo_baseline_qwen2.5_math_1.5b.sh": ("Qwen/Qwen2.5-Math-1.5B", None, "qwen2.5-math-1.5b-grpo"),
    "run_grpo_baseline_qwen3_1.7b.sh": ("Qwen/Qwen3-1.7B", None, "qwen3-1.7b-grpo"),
}


def script_args(script: str, **env: str) -> list[str]:
    done = subprocess.run(
        ["bash", str(RECIPE / script)],
        env={**os.environ, "REPO_RECIPE_PRINT_ARGS": "1", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def compose_script(script: str, **env: str):
    args = script_args(script, **env)
    config_names = [a.split("=", 1)[1] for a in args if a.startswith("--config-name=")]
    overrides = [a for a in args if not a.startswith("--")]
    assert config_names == ["repo_trainer"], args
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return compose(config_name=config_names[0], overrides=overrides)


def test_every_run_script_is_covered():
    assert sorted(p.name for p in RECIPE.glob("run_*.sh")) == sorted(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_composes_to_the_paper_settings(script):
    model, strategy, experiment = SCRIPTS[script]
    cfg = compose_script(script, DATA_DIR="/data/dm")
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout

    assert cfg.actor_rollout_ref.model.path == model
    assert cfg.data.train_files == "/data/dm/deepmath_1024.parquet"
    assert cfg.reward.custom_reward_function.path == "pkg://repo_ext.data.reward"

    # batch: 4 prompts x 8 samples per optimizer step, one PPO epoch over it
    assert rollout.n == PAPER["rollout_n"]
    assert cfg.data.train_batch_size == PAPER["prompts_per_step"]
    assert actor.ppo_mini_batch_size == PAPER["prompts_per_step"] and actor.ppo_epochs == 1
    assert cfg.trainer.total_epochs == PAPER["epochs"]
    # optimizer
    assert actor.optim.lr == PAPER["lr"]
    assert actor.optim.lr_scheduler_type == PAPER["lr_schedule"]
    assert actor.optim.lr_warmup_steps_ratio == PAPER["warmup_ratio"]
    assert actor.optim.min_lr_ratio == 0.0  # cosine to zero, as transformers' cosine schedule
    assert actor.optim.weight_decay == 0.0  # transformers' TrainingArguments default
    assert actor.grad_clip == PAPER["max_grad_norm"]
    # loss: PPO clip 0.2/0.2, no KL, no entropy bonus, per-sequence token mean (TRL loss_type grpo)
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (PAPER["clip_low"], PAPER["clip_high"])
    assert actor.use_kl_loss is False and cfg.algorithm.use_kl_in_reward is False
    assert actor.entropy_coeff == 0
    assert actor.loss_agg_mode == "seq-mean-token-mean"
    # lengths and sampling
    assert cfg.data.max_prompt_length == PAPER["max_prompt"]
    assert cfg.data.max_response_length == PAPER["max_completion"]
    assert (rollout.temperature, rollout.top_k, rollout.top_p) == (PAPER["temperature"], PAPER["top_k"], PAPER["top_p"])
    assert rollout.name == "vllm"
    assert cfg.data.seed == PAPER["seed"] and rollout.seed == PAPER["seed"]
    # in-training validation (if switched on) uses the paper's evaluation decoding
    val = rollout.val_kwargs
    assert (val.temperature, val.top_p, val.top_k, val.do_sample) == (0.2, 0.95, 50, True)
    # bookkeeping: one checkpoint per epoch of 1024 / 4 = 256 steps, with HF weights for evaluation
    assert cfg.trainer.save_freq == 1024 // PAPER["prompts_per_step"]
    assert "hf_model" in actor.checkpoint.save_contents
    assert cfg.trainer.experiment_name == experiment

    if strategy is None:  # the GRPO baseline: verl's own estimator and loss, no replay store
        assert cfg.algorithm.adv_estimator == "grpo"
        assert cfg.algorithm.norm_adv_by_std_in_grpo is True  # scale_rewards=true
        assert actor.policy_loss.loss_mode == "vanilla"
        assert cfg.trainer.v1.trainer_mode == "sync"
    else:
        repo = cfg.algorithm.repo
        assert cfg.algorithm.adv_estimator == "repo_split"
        assert actor.policy_loss.loss_mode == "repo"
        assert cfg.trainer.v1.trainer_mode == "repo_sync"
        assert repo.strategy == strategy
        assert repo.num_replays == PAPER["num_replays"]
        assert repo.min_cache_to_replay == PAPER["min_cache_to_replay"]
        assert repo.max_cache_size == PAPER["max_cache_size"]
        assert repo.advantage_mode == PAPER["advantage_mode"]
        assert cfg.algorithm.norm_adv_by_std_in_grpo is True  # scale_rewards=true: verl's switch governs repo_split
        assert repo.epsilon == PAPER["std_epsilon"]
        assert repo.off_policy_loss_coef == PAPER["off_policy_loss_coef"]


def _flat(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flat(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


@pytest.mark.parametrize(
    "repo_script, grpo_script",
    [
        ("run_qwen2.5_math_1.5b_recent_k.sh", "run_grpo_baseline_qwen2.5_math_1.5b.sh"),
        ("run_qwen3_1.7b_highest_k.sh", "run_grpo_baseline_qwen3_1.7b.sh"),
    ],
)
def test_grpo_baseline_differs_from_repo_only_in_the_algorithm(repo_script, grpo_script):
    repo = dict(_flat(OmegaConf.to_container(compose_script(repo_script), resolve=True)))
    grpo = dict(_flat(OmegaConf.to_container(compose_script(grpo_script), resolve=True)))
    differing = {k for k in set(repo) | set(grpo) if repo.get(k, "<absent>") != grpo.get(k, "<absent>")}
    allowed = {
        "algorithm.adv_estimator",
        "actor_rollout_ref.actor.policy_loss.loss_mode",
        "trainer.v1.trainer_mode",
        "trainer.experiment_name",
        "trainer.default_local_dir",
        "actor_rollout_ref.rollout.trace.experiment_name",
    }
    unexpected = {k for k in differing - allowed if not k.startswith("algorithm.repo.")}
    assert not unexpected, f"the baseline differs from RePO in more than the algorithm: {sorted(unexpected)}"
    assert "algorithm.adv_estimator" in differing


def test_environment_and_extra_overrides_reach_the_config():
    cfg = compose_script(
        "run_qwen3_1.7b_highest_k.sh", MODEL_PATH="/models/q3", N_GPUS="4", CKPT_DIR="/ckpt"
    )
    assert cfg.actor_rollout_ref.model.path == "/models/q3" and cfg.trainer.n_gpus_per_node == 4
    assert cfg.trainer.default_local_dir == "/ckpt/repo/qwen3-1.7b-repo-highest_k"
    args = script_args("run_qwen3_1.7b_highest_k.sh")
    # extra arguments come last, so they win over the script's own values
    done = subprocess.run(
        ["bash", str(RECIPE / "run_qwen3_1.7b_highest_k.sh"), "algorithm.repo.strategy=max_variance_k"],
        env={**os.environ, "REPO_RECIPE_PRINT_ARGS": "1"}, capture_output=True, text=True, timeout=30, check=True,
    )
    assert done.stdout.splitlines() == args + ["algorithm.repo.strategy=max_variance_k"]


def test_missing_data_file_is_reported_before_starting(tmp_path):
    done = subprocess.run(
        ["bash", str(RECIPE / "run_qwen2.5_math_1.5b_recent_k.sh")],
        env={**os.environ, "DATA_DIR": str(tmp_path), "PYTHON": "false"},
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode != 0 and "prepare_deepmath.py" in done.stderr and str(tmp_path) in done.stderr


def test_stock_entry_point_prints_the_composed_job(tmp_path):
    """The real launch path: `python -m verl.trainer.main_ppo <args> --cfg job` prints the config and exits."""
    (tmp_path / "deepmath_1024.parquet").write_bytes(b"")  # the script only checks that it exists
    done = subprocess.run(
        ["bash", str(RECIPE / "run_qwen2.5_math_1.5b_recent_k.sh"), "--cfg", "job"],
        env={**os.environ, "DATA_DIR": str(tmp_path), "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    job = OmegaConf.create(done.stdout)
    assert job.algorithm.repo.strategy == "recent_k" and job.actor_rollout_ref.rollout.n == 8
    assert job.actor_rollout_ref.model.path == "Qwen/Qwen2.5-Math-1.5B"
