#!/usr/bin/env bash
# RePO on Qwen3-1.7B with highest_k replay: the paper's setting (see README.md).
# Usage: bash recipe/repo/run_qwen3_1.7b_highest_k.sh [extra Hydra overrides]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-1.7B}

run_main_ppo qwen3-1.7b-repo-highest_k \
    algorithm=repo \
    algorithm.repo.strategy=highest_k \
    "actor_rollout_ref.model.path=$MODEL_PATH" \
    "$@"
