"""verl's own example scripts with ``algorithm.adv_estimator=grpo`` swapped for ``algorithm=repo``.

What a user does first: take the verl script they run, add ``algorithm=repo``. Each script's
overrides are kept here as data, copied from verl's repository (not downloaded at test time) at

    verl-project/verl 859c71295d79f47e089cb7ddf6965199f4f6fa81 (2026-08-14), the last commit of the
    0.9 line before main was bumped to 0.10.0.dev; this environment runs verl 0.9.1.

Shell variables are resolved to the values each script uses on GPUs (its ``gpu`` branch, no
``MACHINE``). Kept as they are, though nothing here reads them: data and model paths, ``vllm``,
``wandb``, GPU counts. Dropped, per script (``DROPPED``): only what cannot compose on verl's
``ppo_trainer``, and ``algorithm.adv_estimator=...`` where the script's algorithm is swapped.

Each launch goes through what ``python -m verl.trainer.main_ppo`` runs before Ray starts: Hydra
composition, our :class:`RePOLaunchCheck` (a Hydra callback, ``on_job_start``), then verl's own
``auto_set_device`` and ``validate_config`` (verl/trainer/main_ppo.py, ``main``). Expectations are
explicit per script: ``PASSES`` or the fragments of the launch check's message.
"""

from __future__ import annotations

import sys
import types

import pytest
from launch_config import compose_verl
from omegaconf import OmegaConf

from repo_ext.integration.config_checks import RePOLaunchCheck

VERL_COMMIT = "859c71295d79f47e089cb7ddf6965199f4f6fa81"
PASSES = ()
HOME = "/home/user"

# examples/grpo_trainer/run_qwen3_8b_fsdp.sh (DATA, MODEL, ACTOR, ROLLOUT, REF, TRAINER arrays; DEVICE=gpu)
QWEN3_8B_FSDP = [
    "algorithm.use_kl_in_reward=False",
    f"data.train_files=['{HOME}/data/gsm8k/train.parquet', '{HOME}/data/math/train.parquet']",
    f"data.val_files=['{HOME}/data/gsm8k/test.parquet', '{HOME}/data/math/test.parquet']",
    "data.train_batch_size=1024",
    "data.max_prompt_length=1024",
    "data.max_response_length=2048",
    "data.filter_overlong_prompts=True",
    "data.truncation=error",
    "actor_rollout_ref.model.path=Qwen/Qwen3-8B",
    "actor_rollout_ref.model.use_remove_padding=True",
    "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    "actor_rollout_ref.actor.optim.lr=1e-6",
    "actor_rollout_ref.actor.ppo_mini_batch_size=256",
    "actor_rollout_ref.actor.use_dynamic_bsz=True",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=24576",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_coef=0.001",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.entropy_coeff=0",
    "actor_rollout_ref.actor.fsdp_config.param_offload=False",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=False",
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.6",
    "actor_rollout_ref.rollout.n=5",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=24576",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True",
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=24576",
    "actor_rollout_ref.ref.fsdp_config.param_offload=True",
    "trainer.balance_batch=True",
    "trainer.logger=['console','wandb']",
    "trainer.project_name=verl_grpo_gsm8k_math",
    "trainer.experiment_name=qwen3_8b_grpo_vllm_fsdp",
    "trainer.n_gpus_per_node=8",
    "trainer.nnodes=1",
    "trainer.save_freq=20",
    "trainer.test_freq=5",
    "trainer.total_epochs=15",
]

# examples/gspo_trainer/run_qwen3_8b_fsdp.sh (DEVICE=gpu): GRPO advantages with the GSPO loss
GSPO_QWEN3_8B_FSDP = [
    "algorithm.use_kl_in_reward=False",
    f"data.train_files=['{HOME}/data/gsm8k/train.parquet', '{HOME}/data/math/train.parquet']",
    f"data.val_files=['{HOME}/data/gsm8k/test.parquet', '{HOME}/data/math/test.parquet']",
    "data.train_batch_size=512",
    "data.max_prompt_length=2048",
    "data.max_response_length=8192",
    "data.filter_overlong_prompts=True",
    "data.truncation=error",
    "actor_rollout_ref.model.path=Qwen/Qwen3-8B",
    "actor_rollout_ref.model.use_remove_padding=True",
    "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    "actor_rollout_ref.actor.policy_loss.loss_mode=gspo",
    "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
    "actor_rollout_ref.actor.clip_ratio_low=3e-4",
    "actor_rollout_ref.actor.clip_ratio_high=4e-4",
    "actor_rollout_ref.actor.clip_ratio_c=10.0",
    "actor_rollout_ref.actor.optim.lr=1e-6",
    "actor_rollout_ref.actor.ppo_mini_batch_size=128",
    "actor_rollout_ref.actor.use_dynamic_bsz=True",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=20480",
    "actor_rollout_ref.actor.use_kl_loss=False",
    "actor_rollout_ref.actor.entropy_coeff=0",
    "actor_rollout_ref.actor.fsdp_config.param_offload=True",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=True",
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.6",
    "actor_rollout_ref.rollout.n=16",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=20480",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True",
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=20480",
    "actor_rollout_ref.ref.fsdp_config.param_offload=True",
    "trainer.balance_batch=True",
    "trainer.critic_warmup=0",
    "trainer.logger=['console','wandb']",
    "trainer.project_name=verl_gspo_gsm8k_math",
    "trainer.experiment_name=qwen3_8b_vllm_fsdp",
    "trainer.n_gpus_per_node=8",
    "trainer.nnodes=1",
    "trainer.save_freq=20",
    "trainer.test_freq=10",
    "trainer.total_epochs=10",
]

# examples/tuning/lora/run_qwen3_8b_fsdp.sh (LoRA rank 64 on FSDP, vLLM layered summon)
LORA_QWEN3_8B_FSDP = [
    "algorithm.use_kl_in_reward=False",
    f"data.train_files={HOME}/data/gsm8k/train.parquet",
    f"data.val_files={HOME}/data/gsm8k/test.parquet",
    "data.train_batch_size=64",
    "data.max_prompt_length=512",
    "data.max_response_length=1024",
    "data.filter_overlong_prompts=True",
    "data.truncation=error",
    "actor_rollout_ref.model.path=Qwen/Qwen3-8B",
    "actor_rollout_ref.model.lora_rank=64",
    "actor_rollout_ref.model.lora_alpha=32",
    "actor_rollout_ref.model.use_remove_padding=True",
    "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    "actor_rollout_ref.actor.optim.lr=3e-6",
    "actor_rollout_ref.actor.ppo_mini_batch_size=32",
    "actor_rollout_ref.actor.use_dynamic_bsz=True",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=12288",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_coef=0.001",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.entropy_coeff=0",
    "actor_rollout_ref.actor.fsdp_config.param_offload=False",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=False",
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.6",
    "actor_rollout_ref.rollout.n=5",
    "actor_rollout_ref.rollout.load_format=safetensors",
    "actor_rollout_ref.rollout.layered_summon=True",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=12288",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True",
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=12288",
    "actor_rollout_ref.ref.fsdp_config.param_offload=True",
    "trainer.balance_batch=True",
    "trainer.logger=['console','wandb']",
    "trainer.project_name=verl_grpo_lora_gsm8k",
    "trainer.experiment_name=qwen3_8b_lora_vllm_fsdp",
    "trainer.n_gpus_per_node=2",
    "trainer.nnodes=1",
    "trainer.val_before_train=False",
    "trainer.save_freq=20",
    "trainer.test_freq=5",
    "trainer.total_epochs=15",
]

# examples/rollout_correction/run_qwen2_5_7b_fsdp.sh: bypass mode, sequence-level IS, REINFORCE loss
# (its estimator is rloo, swapped for algorithm=repo like grpo elsewhere)
BYPASS_IS_QWEN2_5_7B = [
    "data.train_files=data/train.parquet",
    "data.val_files=data/test.parquet",
    "data.max_prompt_length=2048",
    "data.max_response_length=4096",
    "data.train_batch_size=128",
    "data.truncation=left",
    "algorithm.gamma=1.0",
    "algorithm.rollout_correction.rollout_is=sequence",
    "algorithm.rollout_correction.rollout_is_threshold=2.0",
    "algorithm.rollout_correction.rollout_is_batch_normalize=true",
    "algorithm.rollout_correction.rollout_rs=null",
    "algorithm.rollout_correction.rollout_rs_threshold=null",
    "algorithm.rollout_correction.bypass_mode=true",
    "algorithm.rollout_correction.loss_type=reinforce",
    "actor_rollout_ref.model.path=Qwen/Qwen2.5-7B",
    "actor_rollout_ref.actor.optim.lr=5e-7",
    "actor_rollout_ref.actor.ppo_mini_batch_size=32",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.actor.ppo_epochs=1",
    "actor_rollout_ref.rollout.calculate_log_probs=True",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.name=vllm",
    "trainer.logger=['console','wandb']",
    "trainer.project_name=rollout_corr_rloo_example",
    "trainer.experiment_name=rloo_seq_is_pure",
    "trainer.total_epochs=10",
]

# DAPO's settings as verl 0.9 ships them in verl/experimental/one_step_off_policy/shell/
# dapo_7b_math_fsdp2_4_12.sh (clip-higher, token-mean, overlong buffer, DAPO reward manager),
# launched here with verl's stock entry point instead of the experimental one
DAPO_7B_MATH = [
    f"data.train_files={HOME}/verl/data/dapo-math-17k.parquet",
    f"data.val_files={HOME}/verl/data/aime-2024.parquet",
    "data.prompt_key=prompt",
    "data.truncation=left",
    "data.max_prompt_length=2048",
    "data.max_response_length=8192",
    "data.train_batch_size=512",
    "actor_rollout_ref.rollout.n=12",
    "algorithm.use_kl_in_reward=False",
    "algorithm.kl_ctrl.kl_coef=0.0",
    "actor_rollout_ref.actor.fsdp_config.strategy=fsdp2",
    "critic.strategy=fsdp2",
    "actor_rollout_ref.actor.use_kl_loss=False",
    "actor_rollout_ref.actor.kl_loss_coef=0.0",
    "actor_rollout_ref.actor.clip_ratio_low=0.2",
    "actor_rollout_ref.actor.clip_ratio_high=0.28",
    "actor_rollout_ref.actor.clip_ratio_c=10.0",
    "actor_rollout_ref.model.use_remove_padding=True",
    "+actor_rollout_ref.model.override_config.max_position_embeddings=32768",
    "actor_rollout_ref.actor.use_dynamic_bsz=True",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=20480",
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=30720",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=30720",
    f"actor_rollout_ref.model.path={HOME}/verl/models/Qwen2.5-Math-7B",
    "actor_rollout_ref.actor.optim.lr=1e-6",
    "actor_rollout_ref.actor.optim.lr_warmup_steps=10",
    "actor_rollout_ref.actor.optim.weight_decay=0.1",
    "actor_rollout_ref.actor.ppo_mini_batch_size=32",
    "actor_rollout_ref.actor.fsdp_config.param_offload=False",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=False",
    "actor_rollout_ref.actor.entropy_coeff=0",
    "actor_rollout_ref.actor.grad_clip=1.0",
    "actor_rollout_ref.actor.loss_agg_mode=token-mean",
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size=4",
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.80",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
    "actor_rollout_ref.rollout.enable_chunked_prefill=True",
    "actor_rollout_ref.rollout.max_num_batched_tokens=10240",
    "actor_rollout_ref.rollout.temperature=1.0",
    "actor_rollout_ref.rollout.top_p=1.0",
    "actor_rollout_ref.rollout.top_k=-1",
    "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
    "actor_rollout_ref.rollout.val_kwargs.top_p=0.7",
    "actor_rollout_ref.rollout.val_kwargs.top_k=-1",
    "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
    "actor_rollout_ref.rollout.val_kwargs.n=1",
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.ref.fsdp_config.param_offload=True",
    "actor_rollout_ref.ref.ulysses_sequence_parallel_size=4",
    "actor_rollout_ref.actor.fsdp_config.fsdp_size=2",
    "reward.reward_manager.name=dapo",
    "+reward.reward_kwargs.overlong_buffer_cfg.enable=True",
    "+reward.reward_kwargs.overlong_buffer_cfg.len=4096",
    "+reward.reward_kwargs.overlong_buffer_cfg.penalty_factor=1.0",
    "+reward.reward_kwargs.overlong_buffer_cfg.log=False",
    "+reward.reward_kwargs.max_resp_len=8192",
    "trainer.logger=['console','tensorboard']",
    "trainer.project_name=DAPO",
    "trainer.experiment_name=DAPO-Qwen2.5-7b-MATH-0527a1-fsdp2-one-step-off-4-12",
    "trainer.val_before_train=True",
    "trainer.test_freq=10",
    "trainer.save_freq=-1",
    "trainer.total_epochs=10",
    "trainer.total_training_steps=100",
    f"trainer.default_local_dir={HOME}/verl/ckpts/DAPO/DAPO-Qwen2.5-7b-MATH-0527a1-fsdp2-one-step-off-4-12",
    "trainer.resume_mode=auto",
    "trainer.log_val_generations=10",
    "trainer.nnodes=2",
    "trainer.n_gpus_per_node=6",
]

# docs/algo/grpo.md, "DrGRPO": GRPO's settings plus these three (run_qwen3_8b_fsdp.sh as the base)
DR_GRPO = [
    "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm",
    "actor_rollout_ref.actor.use_kl_loss=False",
    "algorithm.norm_adv_by_std_in_grpo=False",
]


# examples/grpo_trainer/run_qwen2-7b_math_megatron_fsdp.sh: `--config-name=ppo_megatron_trainer.yaml`
# (TP=4, PP=1, GEN_TP=4, async rollout, mbridge, Megatron-FSDP)
MEGATRON_QWEN2_7B_MATH = [
    f"data.train_files=['{HOME}/data/gsm8k/train.parquet', '{HOME}/data/math/train.parquet']",
    f"data.val_files=['{HOME}/data/gsm8k/test.parquet', '{HOME}/data/math/test.parquet']",
    "data.return_raw_chat=True",
    "data.train_batch_size=32",
    "data.max_prompt_length=512",
    "data.max_response_length=512",
    "data.filter_overlong_prompts=True",
    "data.truncation=error",
    "algorithm.use_kl_in_reward=False",
    "actor_rollout_ref.model.path=Qwen/Qwen2.5-Math-7B",
    "actor_rollout_ref.model.use_fused_kernels=False",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=4",
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.rollout.mode=async",
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.4",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.optim.lr=1e-6",
    "actor_rollout_ref.actor.ppo_mini_batch_size=16",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_coef=0.001",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.entropy_coeff=0",
    "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=1",
    "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=4",
    "actor_rollout_ref.actor.megatron.use_mbridge=True",
    "actor_rollout_ref.actor.megatron.vanilla_mbridge=False",
    "actor_rollout_ref.actor.megatron.use_megatron_fsdp=True",
    "++actor_rollout_ref.actor.megatron.override_transformer_config.gradient_accumulation_fusion=False",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.megatron.pipeline_model_parallel_size=1",
    "actor_rollout_ref.ref.megatron.tensor_model_parallel_size=4",
    "actor_rollout_ref.ref.megatron.use_mbridge=True",
    "actor_rollout_ref.ref.megatron.vanilla_mbridge=False",
    "actor_rollout_ref.ref.megatron.use_megatron_fsdp=True",
    "++actor_rollout_ref.ref.megatron.override_transformer_config.gradient_accumulation_fusion=False",
    "trainer.critic_warmup=0",
    "trainer.logger=['console','wandb']",
    "trainer.project_name=verl_grpo_example_gsm8k_math",
    "trainer.experiment_name=qwen2_7b_megatron_fsdp",
    "trainer.n_gpus_per_node=8",
    "trainer.nnodes=1",
    "trainer.save_freq=20",
    "trainer.test_freq=5",
    "trainer.total_epochs=15",
]


def _without(overrides, *keys):
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+") not in keys]


# name -> (overrides after algorithm=repo, what was dropped from the script and why, expectation,
#          the issue-23 finding whose fix the expectation follows, or None)
SCRIPTS = {
    "grpo_trainer/run_qwen3_8b_fsdp.sh": (
        QWEN3_8B_FSDP, "algorithm.adv_estimator=grpo (swapped)", PASSES, None),
    "grpo_trainer/run_qwen3_8b_fsdp.sh, adv_estimator=grpo left in": (
        ["algorithm.adv_estimator=grpo", *QWEN3_8B_FSDP], "nothing",
        ("algorithm.adv_estimator=grpo", "Remove the override algorithm.adv_estimator=grpo"), "issue 23 finding 5"),
    # finding 3: algorithm.norm_adv_by_std_in_grpo=False must govern RePO's advantages (or be refused)
    "grpo_trainer/run_qwen3_8b_fsdp.sh + Dr. GRPO (docs/algo/grpo.md)": (
        [*_without(QWEN3_8B_FSDP, "actor_rollout_ref.actor.use_kl_loss"), *DR_GRPO],
        "algorithm.adv_estimator=grpo (swapped)", PASSES, "issue 23 finding 3"),
    "gspo_trainer/run_qwen3_8b_fsdp.sh": (
        GSPO_QWEN3_8B_FSDP, "algorithm.adv_estimator=grpo (swapped)",
        ("actor_rollout_ref.actor.policy_loss.loss_mode=gspo",
         "Remove the override actor_rollout_ref.actor.policy_loss.loss_mode=gspo"), "issue 23 finding 5"),
    "gspo_trainer/run_qwen3_8b_fsdp.sh without its loss_mode": (
        _without(GSPO_QWEN3_8B_FSDP, "actor_rollout_ref.actor.policy_loss.loss_mode"),
        "algorithm.adv_estimator=grpo (swapped), actor_rollout_ref.actor.policy_loss.loss_mode=gspo",
        PASSES, None),
    "tuning/lora/run_qwen3_8b_fsdp.sh": (
        LORA_QWEN3_8B_FSDP, "algorithm.adv_estimator=grpo (swapped)", PASSES, None),
    # the script leaves actor_rollout_ref.rollout.n at verl's default 1 (its RLOO groups come from elsewhere)
    "rollout_correction/run_qwen2_5_7b_fsdp.sh (bypass, IS, reinforce)": (
        BYPASS_IS_QWEN2_5_7B, "algorithm.adv_estimator=rloo (swapped)",
        ("actor_rollout_ref.rollout.n=1", "RePO needs at least 2 on-policy samples per prompt"), None),
    # verl 0.9.1's V1 trainer (RePO's base) reads bypass_mode only to take rollout_log_probs as
    # old_log_probs; rollout_correction.loss_type=reinforce is read by the legacy trainer alone
    # (ray_trainer.py, apply_bypass_mode): the run would silently train with the `repo` PPO-clip
    # loss, so the launch check refuses it and names the override
    "rollout_correction/run_qwen2_5_7b_fsdp.sh with rollout.n=5": (
        [*BYPASS_IS_QWEN2_5_7B, "actor_rollout_ref.rollout.n=5"], "algorithm.adv_estimator=rloo (swapped)",
        ("algorithm.rollout_correction.loss_type=reinforce",
         "Remove the override algorithm.rollout_correction.loss_type=reinforce"), "issue 23 finding 5"),
    "rollout_correction/run_qwen2_5_7b_fsdp.sh with rollout.n=5, without its loss_type": (
        [*_without(BYPASS_IS_QWEN2_5_7B, "algorithm.rollout_correction.loss_type"), "actor_rollout_ref.rollout.n=5"],
        "algorithm.adv_estimator=rloo (swapped), algorithm.rollout_correction.loss_type=reinforce",
        PASSES, "issue 23 finding 1"),
    "one_step_off_policy/shell/dapo_7b_math_fsdp2_4_12.sh settings on main_ppo": (
        DAPO_7B_MATH,
        "algorithm.adv_estimator=grpo (swapped); actor_rollout_ref.hybrid_engine=False, rollout.nnodes=2, "
        "rollout.n_gpus_per_node=2 (keys of the one-step-off entry point's own config, not of ppo_trainer)",
        PASSES, None),
    "grpo_trainer/run_qwen2-7b_math_megatron_fsdp.sh (--config-name=ppo_megatron_trainer)": (
        MEGATRON_QWEN2_7B_MATH, "algorithm.adv_estimator=grpo (swapped)", PASSES, None),
    # common additions to a script, on run_qwen3_8b_fsdp.sh: validation with n > 1, validation only,
    # a reward model, a custom reward function, Ulysses sequence parallelism, several PPO epochs
    "run_qwen3_8b_fsdp.sh + val n=4, val_only, reward model, custom reward, Ulysses 2, ppo_epochs=2": (
        [*QWEN3_8B_FSDP, "actor_rollout_ref.rollout.val_kwargs.n=4", "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
         "trainer.val_only=True", "reward.reward_model.enable=True", "reward.reward_model.model_path=Skywork/RM",
         "reward.custom_reward_function.path=/home/user/my_reward.py", "reward.custom_reward_function.name=compute_score",
         "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2", "actor_rollout_ref.ref.ulysses_sequence_parallel_size=2",
         "actor_rollout_ref.actor.ppo_epochs=2", "actor_rollout_ref.actor.shuffle=True"],
        "algorithm.adv_estimator=grpo (swapped)", PASSES, None),
    "DAPO + dynamic sampling (algorithm.filter_groups.enable=True)": (
        [*DAPO_7B_MATH, "algorithm.filter_groups.enable=True", "algorithm.filter_groups.metric=acc",
         "algorithm.filter_groups.max_num_gen_batches=10"],
        "as above",
        ("algorithm.filter_groups.enable=True", "Remove the override algorithm.filter_groups.enable=True"),
        "issue 23 finding 5"),
}


def _vllm_lora_rank_check_without_vllm(monkeypatch):
    """verl's ``validate_config`` checks a LoRA rank against vLLM's allowed ranks by importing
    ``verl.workers.rollout.vllm_rollout.utils``, which imports vllm (not installed on a CPU machine).
    Without vllm, that one function is replaced by the rule it applies, written out from verl 0.9.1's
    fallback list (``MaxLoRARanks``): a rank up to 512 is rounded up to the next allowed rank."""
    try:
        import vllm  # noqa: F401

        return
    except ImportError:
        pass

    def get_vllm_max_lora_rank(lora_rank):
        allowed = [1, 8, 16, 32, 64, 128, 256, 320, 512]
        if lora_rank > allowed[-1]:
            raise ValueError(f"lora_rank must be less than or equal to {allowed[-1]}, but got {lora_rank}")
        return next(rank for rank in allowed if lora_rank <= rank)

    package = types.ModuleType("verl.workers.rollout.vllm_rollout")
    utils = types.ModuleType("verl.workers.rollout.vllm_rollout.utils")
    utils.get_vllm_max_lora_rank = get_vllm_max_lora_rank
    package.utils = utils
    monkeypatch.setitem(sys.modules, package.__name__, package)
    monkeypatch.setitem(sys.modules, utils.__name__, utils)


def _launch(overrides):
    """What main_ppo runs before Ray: compose, our Hydra callback, verl's device and config checks."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    name = "ppo_megatron_trainer" if overrides is MEGATRON_QWEN2_7B_MATH else "ppo_trainer"
    cfg = compose_verl(["algorithm=repo", *overrides], name=name, hydra=True)
    RePOLaunchCheck().on_job_start(config=cfg)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    auto_set_device(job)
    validate_config(config=job, use_reference_policy=need_reference_policy(job), use_critic=need_critic(job))
    return job


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_verl_example_script_with_algorithm_repo(name, monkeypatch):
    overrides, _dropped, expected, _depends_on = SCRIPTS[name]
    _vllm_lora_rank_check_without_vllm(monkeypatch)
    if expected == PASSES:
        cfg = _launch(overrides)
        # RePO's parts, and the script's own values on top of verl's defaults
        assert cfg.algorithm.adv_estimator == "repo_split" and cfg.trainer.v1.trainer_mode == "repo_sync"
        assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "repo"
        for override in overrides:
            key, value = override.lstrip("+").split("=", 1)
            if value.replace(".", "", 1).isdigit():
                assert float(OmegaConf.select(cfg, key)) == float(value), override
    else:
        with pytest.raises(ValueError) as info:
            _launch(overrides)
        for fragment in expected:
            assert fragment in str(info.value), (fragment, str(info.value))
