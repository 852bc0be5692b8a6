# Shared by the run_*.sh scripts of this recipe; sourced, not run.
#
# The paper's hyperparameters are NOT repeated here: they are the defaults of
# repo_ext/config/repo_trainer.yaml (selected with --config-name=repo_trainer). This file adds
# what a GPU run needs on top: data files, the reward function, the vLLM rollout, FSDP2, GPU
# counts, checkpointing. Every value can be changed from the environment (below) or by passing
# extra Hydra overrides to a run script: `bash run_....sh trainer.n_gpus_per_node=4`.
#
# Environment:
#   DATA_DIR        folder with deepmath_1024.parquet and math500.parquet (prepare_deepmath.py)
#   N_GPUS          GPUs per node (default 8); NNODES (default 1)
#   ROLLOUT_TP      vLLM tensor parallel size (default 1)
#   GPU_MEMORY_UTILIZATION  vLLM's share of GPU memory (default 0.6)
#   CKPT_DIR        checkpoint root (default ./checkpoints)
#   PYTHON          the interpreter (default python3)
#   REPO_RECIPE_PRINT_ARGS=1  print the arguments, one per line, instead of training
#                   (tests/recipe compose them with Hydra and check them against the paper)

RECIPE_PROJECT=repo
DATA_DIR=${DATA_DIR:-$HOME/data/deepmath}
N_GPUS=${N_GPUS:-8}
NNODES=${NNODES:-1}
ROLLOUT_TP=${ROLLOUT_TP:-1}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.6}
CKPT_DIR=${CKPT_DIR:-checkpoints}
PYTHON=${PYTHON:-python3}

# 1024 prompts / 4 prompts per step = 256 steps per epoch: save once per epoch, as the reference
STEPS_PER_EPOCH=256

COMMON_OVERRIDES=(
    "data.train_files=$DATA_DIR/deepmath_1024.parquet"
    # validation is off (test_freq=-1); evaluate checkpoints with `python -m repo_ext.evaluation`
    "data.val_files=$DATA_DIR/math500.parquet"
    # TRL (the reference) keeps the last max_prompt_length tokens of a longer prompt
    "data.truncation=left"
    "reward.custom_reward_function.path=pkg://repo_ext.data.reward"
    "reward.custom_reward_function.name=compute_score"
    "actor_rollout_ref.actor.strategy=fsdp2"
    "actor_rollout_ref.model.use_remove_padding=true"
    "actor_rollout_ref.model.enable_gradient_checkpointing=true"
    "actor_rollout_ref.actor.use_dynamic_bsz=true"
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384"
    # hf_model: a full HF folder in global_step_N/actor/huggingface, read directly by repo_ext.evaluation
    "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]"
    "actor_rollout_ref.rollout.name=vllm"
    "actor_rollout_ref.rollout.tensor_model_parallel_size=$ROLLOUT_TP"
    "actor_rollout_ref.rollout.gpu_memory_utilization=$GPU_MEMORY_UTILIZATION"
    # the paper's evaluation decoding, used if validation is switched on (trainer.test_freq > 0)
    "actor_rollout_ref.rollout.val_kwargs.do_sample=true"
    "actor_rollout_ref.rollout.val_kwargs.temperature=0.2"
    "actor_rollout_ref.rollout.val_kwargs.top_p=0.95"
    "actor_rollout_ref.rollout.val_kwargs.top_k=50"
    "actor_rollout_ref.rollout.val_kwargs.n=1"
    "trainer.project_name=$RECIPE_PROJECT"
    "trainer.n_gpus_per_node=$N_GPUS"
    "trainer.nnodes=$NNODES"
    "trainer.save_freq=$STEPS_PER_EPOCH"
    "trainer.test_freq=-1"
    "trainer.val_before_train=false"
)

# run_main_ppo EXPERIMENT OVERRIDE... : train with verl's stock entry point and our primary config
run_main_ppo() {
    local experiment=$1
    shift
    local args=(
        --config-name=repo_trainer
        "${COMMON_OVERRIDES[@]}"
        "trainer.experiment_name=$experiment"
        "trainer.default_local_dir=$CKPT_DIR/$RECIPE_PROJECT/$experiment"
        "$@"
    )
    if [[ -n "${REPO_RECIPE_PRINT_ARGS:-}" ]]; then
        printf '%s\n' "${args[@]}"
        return 0
    fi
    if [[ ! -f "$DATA_DIR/deepmath_1024.parquet" ]]; then
        echo "error: $DATA_DIR/deepmath_1024.parquet not found; run" >&2
        echo "  python recipe/repo/prepare_deepmath.py --input <DeepMath-103K parquet/jsonl> --out-dir $DATA_DIR" >&2
        echo "or set DATA_DIR to the folder that holds it" >&2
        return 1
    fi
    "$PYTHON" -m verl.trainer.main_ppo "${args[@]}"
}
