#!/usr/bin/env bash
# GRPO baseline on Qwen2.5-Math-1.5B: every setting as run_qwen2.5_math_1.5b_recent_k.sh, no replay
# (verl's own GRPO advantage and vanilla PPO-clip loss, selected by algorithm=grpo).
# Usage: bash recipe/repo/run_grpo_baseline_qwen2.5_math_1.5b.sh [extra Hydra overrides]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-Math-1.5B}

run_main_ppo qwen2.5-math-1.5b-grpo \
    algorithm=grpo \
    "actor_rollout_ref.model.path=$MODEL_PATH" \
    "$@"
