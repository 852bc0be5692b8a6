#!/usr/bin/env bash
# RePO on Qwen2.5-Math-1.5B with recent_k replay: the paper's setting (see README.md).
# Usage: bash recipe/repo/run_qwen2.5_math_1.5b_recent_k.sh [extra Hydra overrides]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-Math-1.5B}

run_main_ppo qwen2.5-math-1.5b-repo-recent_k \
    algorithm=repo \
    algorithm.repo.strategy=recent_k \
    "actor_rollout_ref.model.path=$MODEL_PATH" \
    "$@"
