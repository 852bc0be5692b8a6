#!/usr/bin/env bash
# GRPO baseline on Qwen3-1.7B: every setting as run_qwen3_1.7b_highest_k.sh, no replay
# (verl's own GRPO advantage and vanilla PPO-clip loss, selected by algorithm=grpo).
# Usage: bash recipe/repo/run_grpo_baseline_qwen3_1.7b.sh [extra Hydra overrides]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-1.7B}

run_main_ppo qwen3-1.7b-grpo \
    algorithm=grpo \
    "actor_rollout_ref.model.path=$MODEL_PATH" \
    "$@"
