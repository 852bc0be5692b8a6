#!/usr/bin/env bash
# One GPU, nothing downloaded: the GPU smoke check (gpu_smoke_check.sh) on the tiny random model.
#
# For a GPU machine without a model hub or vLLM, or to check an install in a minute before the real
# smoke check: the actor trains on the GPU (FSDP2 over NCCL, verl's default bf16 mixed precision,
# the `repo` loss on CUDA tensors) while the `hf_cpu` rollout generates on the host's CPU cores and
# receives the actor's weights every step. Same steps, checkpoint, resume and PASS/FAIL checks as
# gpu_smoke_check.sh, on 8 arithmetic prompts x 4 samples of at most 64 tokens; the tiny model
# (repo_ext.assets.tiny_model) and its tokenizer are built locally. It refuses to start when torch
# sees fewer than N_GPUS CUDA devices, unless the overrides hold +preset=cpu (a rehearsal on CPU).
#
# Usage: bash recipe/repo/gpu_tiny_check.sh [extra Hydra overrides]
# Environment: OUT_DIR (default ./repo_gpu_tiny), N_GPUS (default 1), PYTHON (default python3).
# Without flash-attn: sdpa attention and no padding removal (packed rows need flash-attn's varlen
# kernels); with flash-attn installed, pass actor_rollout_ref.model.use_remove_padding=true.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-repo_gpu_tiny}
OUT_DIR=$(mkdir -p "$OUT_DIR" && cd "$OUT_DIR" && pwd)
N_GPUS=${N_GPUS:-1}

if [[ -z "${REPO_RECIPE_PRINT_ARGS:-}" && " $* " != *" +preset=cpu "* ]]; then
    "$PYTHON" -c "import sys, torch; n = torch.cuda.device_count(); sys.exit(0 if n >= $N_GPUS else \
        f'gpu_tiny_check.sh: torch sees {n} CUDA device(s), N_GPUS={$N_GPUS}; on a machine without a GPU add +preset=cpu')"
fi

REWARD=$("$PYTHON" - "$OUT_DIR" <<'EOF'
import sys
from pathlib import Path
from repo_ext.assets.tiny_model import build_tiny_model
from repo_ext.cpu.tiny_run import reward_function_path, write_arithmetic_parquet
out = Path(sys.argv[1])
build_tiny_model(out / "tiny_model")
write_arithmetic_parquet(out / "train.parquet", num_prompts=8)
print(reward_function_path())
EOF
)

MODEL_PATH="$OUT_DIR/tiny_model" TRAIN_PARQUET="$OUT_DIR/train.parquet" N_GPUS=$N_GPUS \
OUT_DIR="$OUT_DIR" PYTHON="$PYTHON" bash "$HERE/gpu_smoke_check.sh" \
    actor_rollout_ref.rollout.name=hf_cpu \
    ++actor_rollout_ref.model.override_config.attn_implementation=sdpa \
    actor_rollout_ref.model.use_remove_padding=false \
    data.max_prompt_length=64 \
    data.max_response_length=64 \
    "reward.custom_reward_function.path=$REWARD" \
    transfer_queue.backend.SimpleStorage.num_data_storage_units=1 \
    ++ray_kwargs.ray_init.include_dashboard=false \
    "$@"
